"""``ColdItemEditor``: GenRecEdit end to end on a trained backbone (docs/method.md §5), the one entry point that the
CLI, experiments, service and tests call."""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from genrecedit.data.dataset import CaseSet
from genrecedit.edit.artifact import EditArtifact, EditBatch, TriggerMode
from genrecedit.edit.gate import KeyGate, fit_gate
from genrecedit.edit.keys import collect_keys, second_moments, teacher_force, train_fingerprint
from genrecedit.edit.knowledge import EditRequests
from genrecedit.edit.memory import DeltaConfig, optimise_deltas
from genrecedit.edit.objectwise import optimise_object_deltas
from genrecedit.edit.probe import (LayerPolicy, ProbeBackend, ProbeTable, fixed_layers, locate_layers,
                                   negative_samples, probe_folds)
from genrecedit.edit.update import closed_form_update
from genrecedit.errors import ArtifactMismatchError, ConfigError, EmptyInputError
from genrecedit.model.decoder import DecoderCache, edit_delta
from genrecedit.model.recommender import Recommender
from genrecedit.model.tokens import length_batches


@dataclass
class EditConfig:
    lam: float = 1000.0  # λ: preservation vs injection
    # per-position multipliers of λ (one per SID position; None: λ everywhere). The shallow positions' edits fire on
    # many warm beams (every beam sharing c_0) and the deep ones on few, so they can afford a smaller λ
    lam_scale: list[float] | None = None
    layer_policy: LayerPolicy = "probe"
    # the probe moves l_p off the official l_p = p only for a layer whose balanced accuracy is higher at this
    # significance level (a corrected paired t-test over the probe's grouped folds, probe.py); with no signal in
    # any layer the plain argmax leaves l_p = p 3 times in 4 (tests/edit/test_probe.py). None: the paper's argmax
    probe_alpha: float | None = 0.05
    probe_folds: int = 5
    # the probe's logistic fits: torch (all layers of a position at once, on the model's device) or sklearn (one by
    # one on the CPU, the reference implementation; the same objective, accuracies within noise: test_probe.py)
    probe_backend: ProbeBackend = "torch"
    # position_wise: GenRecEdit (one request, δ and ΔW per SID position). object_wise: the paper's "w/o
    # position-wise" ablation, a conventional history → whole-SID edit at (l_0, index 0) (see objectwise.py)
    scheme: Literal["position_wise", "object_wise"] = "position_wise"
    # SID positions to edit (None: all). The paper's analysis: the unedited model already gets the first token of
    # cold items right and collapses at the later ones, so editing position 0 can cost warm items for no gain
    positions: list[int] | None = None
    # optional probe gate (gate.py): ΔW fires only on keys a linear probe takes for this batch's requests, with at
    # most this share of held-out training keys let through. None: no gate (the paper)
    gate_fpr: float | None = None
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    # re-fit λ for the edit that ships before making it (runs/calibrate.py, docs/method.md §5.11; first batch only):
    # the smallest λ ≥ lam whose edit keeps, on the validation cases, warm_drop: the warm NDCG@10 drop ≤ refit_bound
    # (§5.10's bound), or exposure: the cold items' share of warm cases' top-10 slots ≤ that of the edit selection
    # validated at lam. None: ship with lam (the paper)
    refit: Literal["warm_drop", "exposure"] | None = None
    refit_bound: float = 0.05
    c0_samples: int = 20000  # N0 training keys for C0 (≥ several × d_ff)
    probe_samples: int = 2000  # per class and position
    efficacy_samples: int = 2000  # requests re-scored teacher-forced before/after the update
    # requests per teacher-forced chunk, δ batch and efficacy batch. None: 1,024 on the CPU (a chunk's activations
    # stay in the cache); 16,384 on an accelerator, where one chunk of similar-length requests is one Adam loop over
    # (up to) all of a position's requests, so each step is a few large kernels
    chunk_size: int | None = None
    seed: int = 0


@dataclass
class EditReport:
    layers: list[int]
    probe: dict | None
    n_requests: int
    n_items: int
    converged: list[int]  # per position: requests whose δ reached the argmax
    efficacy: dict  # {"base"|"delta"|"edited": [per-position share of target = argmax]}
    timings_s: dict
    c0_cached: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EditMemory:
    """The λ-independent part of one batch (docs/method.md §5.3–5.4): the layers, and each request's key and optimised δ
    at (l_p, p). ``ColdItemEditor.solve`` turns it into ΔW for any λ, so a λ search edits once."""
    requests: EditRequests
    previous: EditArtifact | None
    layers: list[int]
    sites: list[tuple[int, int]]  # (layer, position) edited
    probe: ProbeTable | None
    c0: dict[tuple[int, int], torch.Tensor]
    c0_cached: bool
    keys: dict[int, list[torch.Tensor]]  # per position, chunks of K1ᵀ rows [m, d_ff]
    deltas: dict[int, list[torch.Tensor]]
    converged: list[int]
    timings: dict[str, float]  # probe, c0, keys, delta
    efficacy_before: list[float] | None = None  # teacher-forced efficacy before the batch: filled by the first solve


class ColdItemEditor:
    """Computes GenRecEdit batches against one unedited base model.

    train: the backbone's training samples (C0 and probe negatives come from them); codes: [n_items, P] SIDs of
    the whole catalog (warm and cold); base_hash: the base model's weights hash (artifacts are tied to it).
    """

    def __init__(self, base: Recommender, train: CaseSet, base_hash: str, cfg: EditConfig,
                 cache_dir: Path | None = None, trigger: TriggerMode = "prefix") -> None:
        self.base = base
        # δ is the only thing optimised: the base weights must not collect gradients (load_run also does this, but
        # an editor may be built on any Recommender)
        base.model.requires_grad_(False)
        # how the artifacts will be decoded: a later batch is solved against the earlier batches' edits as they
        # fire under this mode (prefix-gated or not) at each request's own prefix, and efficacy is scored under it.
        # Teacher forcing sees one index at a time, so the all-edits ablation is taken as one-one there.
        self.trigger: TriggerMode = "one_one" if trigger == "all" else trigger
        self.train = train
        self.base_hash = base_hash
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.decoder = base.decoder
        self.layout = base.layout
        self.n_layers = self.decoder.n_layers
        self.n_pos = self.layout.n_positions
        self.chunk_size = cfg.chunk_size or (1024 if self.decoder.device.type == "cpu" else 16384)

    # -- layer location -------------------------------------------------------------------------------------
    def probe(self, requests: EditRequests, codes: np.ndarray) -> ProbeTable:
        """Balanced accuracy [P, L] of a linear probe per (position, layer) (paper Fig. 8)."""
        rng = np.random.default_rng(self.cfg.seed)
        req = requests.subset(np.sort(rng.choice(len(requests), min(len(requests), self.cfg.probe_samples),
                                                 replace=False)))
        neg = negative_samples(len(self.train), requests, self.cfg.probe_samples, rng)
        sites = [(layer, p) for layer in range(self.n_layers) for p in range(self.n_pos)]
        pos_keys = collect_keys(self.decoder, self.layout, req.histories, codes[req.items], codes, sites,
                                desc="probe keys (requests)")
        neg_keys = collect_keys(self.decoder, self.layout, self.train.histories[neg], codes[self.train.targets[neg]],
                                codes, sites, desc="probe keys (training)")
        folds = np.full((self.n_pos, self.n_layers, self.cfg.probe_folds), np.nan)
        layers = range(self.n_layers)
        for p in tqdm(range(self.n_pos), desc="linear probes", leave=False):
            acc = probe_folds(torch.stack([pos_keys[(layer, p)] for layer in layers]),
                              torch.stack([neg_keys[(layer, p)] for layer in layers]), req.items,
                              self.train.targets[neg], self.cfg.seed, self.cfg.probe_folds, self.cfg.probe_backend,
                              self.decoder.device)
            folds[p, :, :acc.shape[1]] = acc  # fewer items than folds: fewer folds (NaN-padded)
        return ProbeTable.from_folds(folds)

    def lam(self, p: int, lam: float | None = None) -> float:
        """λ of SID position p: ``lam`` (default: the config's) times its ``lam_scale`` multiplier."""
        return (self.cfg.lam if lam is None else lam) * (self.cfg.lam_scale[p] if self.cfg.lam_scale is not None
                                                         else 1.0)

    # -- the edit ------------------------------------------------------------------------------------------
    def edit(self, requests: EditRequests, codes: np.ndarray, item_ids: list[str],
             previous: EditArtifact | None = None) -> tuple[EditArtifact, EditReport]:
        """Inject the items of ``requests`` (item indices into ``codes``); returns the artifact with this batch
        appended to ``previous`` (whose layer map is kept) and a report. ``item_ids`` names the batch's items."""
        return self.solve(self.memorize(requests, codes, previous), codes, item_ids)

    def memorize(self, requests: EditRequests, codes: np.ndarray,
                 previous: EditArtifact | None = None) -> EditMemory:
        """Layer location, C0, keys and δ of one batch: everything of ``edit`` that does not depend on λ."""
        positions = self._check_batch(requests, previous)
        if previous is not None and not previous.stats_known:
            previous = self.rebuild_key_stats(previous, codes)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        layers, probe_table = self._locate(requests, codes, previous)
        timings["probe"] = time.perf_counter() - start
        object_wise = self.cfg.scheme == "object_wise"
        if object_wise:
            layers = [layers[0]] * self.n_pos  # one edit layer: the one located for the subject's last token
        # the sites edited: every position, or index 0 alone for an object-wise edit
        sites = [(layers[0], 0)] if object_wise else [(layers[p], p) for p in positions]
        t0 = time.perf_counter()
        c0, c0_cached = self._c0(codes, sites)
        timings["c0"] = time.perf_counter() - t0
        keys, deltas, converged = self._keys_and_deltas(requests, codes, previous, sites, timings)
        return EditMemory(requests, previous, layers, sites, probe_table, c0, c0_cached, keys, deltas, converged,
                          timings)

    def _check_batch(self, requests: EditRequests, previous: EditArtifact | None) -> list[int] | range:
        """Refuse an empty batch, a ``previous`` artifact it cannot stack on and invalid settings; returns the SID
        positions to edit."""
        if len(requests) == 0:
            raise EmptyInputError("no edit requests: the items have no pseudo-histories (no similar warm item "
                                  "with a non-empty training history?)")
        if previous is not None:
            previous.check_base(self.base_hash)
            if previous.scheme != self.cfg.scheme:
                raise ArtifactMismatchError(f"cannot stack a {self.cfg.scheme} batch on a {previous.scheme} artifact")
        positions = range(self.n_pos) if self.cfg.positions is None else sorted(set(self.cfg.positions))
        if any(not 0 <= p < self.n_pos for p in positions) or not positions:
            raise ConfigError(f"edit.positions must be a non-empty subset of 0..{self.n_pos - 1}, "
                              f"got {self.cfg.positions}")
        if self.cfg.probe_folds < 2 or (self.cfg.probe_alpha is not None and not 0 < self.cfg.probe_alpha < 1):
            raise ConfigError(f"edit.probe_folds must be ≥ 2 and edit.probe_alpha in (0, 1) or null, got "
                              f"{self.cfg.probe_folds} and {self.cfg.probe_alpha}")
        if self.cfg.delta.check_every is not None and self.cfg.delta.check_every < 1:
            raise ConfigError(f"edit.delta.check_every must be ≥ 1 or null, got {self.cfg.delta.check_every}")
        if self.cfg.lam_scale is not None and (len(self.cfg.lam_scale) != self.n_pos
                                               or not all(x > 0 for x in self.cfg.lam_scale)):
            raise ConfigError(f"edit.lam_scale must hold {self.n_pos} positive multipliers (one per SID position), "
                              f"got {self.cfg.lam_scale}")
        return positions

    def _locate(self, requests: EditRequests, codes: np.ndarray,
                previous: EditArtifact | None) -> tuple[list[int], ProbeTable | None]:
        """The edit layer of each position (a later batch keeps ``previous``'s) and the probe table, if one ran."""
        if previous is not None:
            return list(previous.layers), None
        probe_table = self.probe(requests, codes) if self.cfg.layer_policy in ("probe", "worst") else None
        return locate_layers(self.cfg.layer_policy, self.n_pos, self.n_layers, probe_table, self.cfg.seed,
                             self.cfg.probe_alpha), probe_table

    def start_stack(self, requests: EditRequests, codes: np.ndarray) -> EditArtifact:
        """An empty artifact holding the layer map located on ``requests`` (the probe, for a probed policy), so
        that the batches stacked on it keep that map instead of probing on their own first batch."""
        layers, _ = self._locate(requests, codes, None)
        return EditArtifact(self.base_hash, layers, [], self.cfg.scheme)

    def warm_c0(self, codes: np.ndarray, previous: EditArtifact | None = None) -> bool:
        """Compute (and cache on disk) C0 at every site the next batch can edit, so that its edit finds it cached:
        the sites of ``previous``'s layer map, of a layer policy that needs no probe, or, for a probed policy,
        every layer at each edited position (the probe picks among them). True when anything was computed."""
        positions = range(self.n_pos) if self.cfg.positions is None else sorted(set(self.cfg.positions))
        if self.cfg.scheme == "object_wise":
            positions = [0]
        if previous is not None:
            sites = [(previous.layers[p], p) for p in positions]
        elif self.cfg.layer_policy in ("probe", "worst"):
            sites = [(layer, p) for p in positions for layer in range(self.n_layers)]
        else:
            layers = locate_layers(self.cfg.layer_policy, self.n_pos, self.n_layers, None, self.cfg.seed)
            sites = [(layers[p], p) for p in positions]
        return not self._c0(codes, sites)[1]

    def _c0(self, codes: np.ndarray, sites: list[tuple[int, int]]) -> tuple[dict[tuple[int, int], torch.Tensor], bool]:
        """C0 at each site from a seeded sample of training keys (cached on disk), and whether it was cached."""
        rng = np.random.default_rng(self.cfg.seed + 1)
        c0_idx = np.sort(rng.choice(len(self.train), min(len(self.train), self.cfg.c0_samples), replace=False))
        fp = train_fingerprint(self.train.histories[c0_idx], self.train.targets[c0_idx])
        return second_moments(self.decoder, self.layout, self.train.histories[c0_idx],
                              codes[self.train.targets[c0_idx]], codes, sites, self.base_hash, fp, self.cache_dir)

    def _keys_and_deltas(self, requests: EditRequests, codes: np.ndarray, previous: EditArtifact | None,
                         sites: list[tuple[int, int]], timings: dict[str, float]
                         ) -> tuple[dict[int, list[torch.Tensor]], dict[int, list[torch.Tensor]], list[int]]:
        """Per edited position, chunks of request keys and optimised δ (against the model as edited by
        ``previous``, as its edits fire when decoding), and per position how many δ converged. Adds the time spent
        on keys and on δ to ``timings``."""
        device = self.decoder.device
        prev_schedule = previous.schedule(self.trigger, device) if previous else None  # as they fire when decoding
        keys = {p: [] for _, p in sites}
        deltas = {p: [] for _, p in sites}
        converged = [0] * self.n_pos
        timings["keys"] = timings["delta"] = 0.0
        targets_all = torch.from_numpy(codes[requests.items])
        # chunks of similar history length: little encoder padding
        for rows in tqdm(length_batches(requests.histories, self.chunk_size), desc="memory construction (δ)",
                         unit="chunk"):
            trows = torch.from_numpy(rows)
            t0 = time.perf_counter()
            tf = teacher_force(self.decoder, self.layout, requests.histories[rows], codes[requests.items[rows]],
                               codes)
            timings["keys"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for layer, p in sites:
                k = tf.keys[p][layer]
                prev_step = prev_schedule(p) if prev_schedule else None
                prev = edit_delta([e for e in prev_step.edits if e.layer == layer], k,
                                  targets_all[trows, :p].to(k.device)) if prev_step else None
                z = tf.values[p][layer] + (prev if prev is not None else 0.0)
                if self.cfg.scheme == "object_wise":
                    result = optimise_object_deltas(self.decoder, self.layout, tf, layer,
                                                    targets_all[trows].to(k.device), z.detach(), self.cfg.delta)
                else:
                    result = optimise_deltas(self.decoder, self.layout, tf, p, layer,
                                             targets_all[trows, p].to(k.device), z.detach(), self.cfg.delta)
                keys[p].append(k.cpu())
                deltas[p].append(result.delta.cpu())
                converged[p] += int(result.converged.sum())
            timings["delta"] += time.perf_counter() - t0
        return keys, deltas, converged

    def solve(self, memory: EditMemory, codes: np.ndarray, item_ids: list[str],
              lam: float | None = None) -> tuple[EditArtifact, EditReport]:
        """The closed-form update of a memorised batch at ``lam`` (default: the config's λ; ``lam_scale`` still
        applies), appended to the batch's ``previous`` artifact, with its report (as ``edit``)."""
        lam = self.cfg.lam if lam is None else float(lam)
        if not lam > 0:
            raise ConfigError(f"λ must be > 0, got {lam:g}")
        requests, previous, layers, sites = memory.requests, memory.previous, memory.layers, memory.sites
        timings = dict(memory.timings)
        t0 = time.perf_counter()
        batch_dw, batch_cov = {}, {}
        for _, p in sites:
            k1 = torch.cat(memory.keys[p])
            prev_cov = previous.previous_cov(p) if previous else None
            batch_cov[p] = k1.to(torch.float64).T @ k1.to(torch.float64)
            # R = Z' − W_cur K1 = δ, because z above already is the current (possibly edited) value. Kept in float32,
            # the precision the decoder applies it in (the artifact sums batches in float64)
            batch_dw[p] = closed_form_update(k1, torch.cat(memory.deltas[p]), memory.c0[(layers[p], p)],
                                             self.lam(p, lam), prev_cov, batch_cov[p]).to(torch.float32)
        timings["solve"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        gates = self._fit_gates(memory.keys, sites, requests, codes) if self.cfg.gate_fpr is not None else {}
        timings["gate"] = time.perf_counter() - t0
        timings["update_total"] = (timings["probe"] + timings["keys"] + timings["delta"] + timings["solve"]
                                   + timings["gate"]
                                   + (0.0 if memory.c0_cached else timings["c0"]))

        edited_items = np.unique(requests.items)
        batch = EditBatch(uuid.uuid4().hex[:12], [item_ids[i] for i in edited_items], codes[edited_items],
                          batch_dw, batch_cov,
                          {"lam": lam, "lam_scale": self.cfg.lam_scale, "n_requests": len(requests),
                           "timings_s": dict(timings),
                           "gate_fpr": self.cfg.gate_fpr}, gates, requests)
        artifact = previous.copy() if previous else EditArtifact(self.base_hash, layers, [], self.cfg.scheme)
        artifact.append(batch)
        efficacy = self.efficacy(requests, codes, artifact, previous, memory.efficacy_before)
        memory.efficacy_before = efficacy["before"]  # λ-independent: later solves of this memory skip that pass
        probe = memory.probe.to_dict(fixed_layers(self.n_pos, self.n_layers), self.cfg.probe_alpha) \
            if memory.probe else None
        report = EditReport(layers, probe, len(requests), len(edited_items), list(memory.converged), efficacy,
                            timings, memory.c0_cached)
        return artifact, report

    # -- the stack: key statistic, rollback, re-edit --------------------------------------------------------
    @torch.no_grad()
    def key_covariance(self, batch: EditBatch, layers: list[int], codes: np.ndarray) -> dict[int, torch.Tensor]:
        """K1 K1ᵀ of ``batch`` at each position it edits (float64 [d_ff, d_ff]), replayed: its stored requests
        teacher-forced through the unedited model at (layers[p], p), in the editor's chunks, as ``solve`` made it.
        ``codes``: the catalog codes the batch's requests index."""
        if not batch.delta_w:
            return {}
        if batch.key_cov and set(batch.delta_w) <= set(batch.key_cov):
            return {p: batch.key_cov[p] for p in batch.delta_w}
        if batch.requests is None:
            raise ArtifactMismatchError(f"batch {batch.batch_id} holds neither its requests nor its key covariance "
                                        "(a format-1 artifact re-saved): its keys cannot be replayed")
        requests, positions = batch.requests, sorted(batch.delta_w)
        keys: dict[int, list[torch.Tensor]] = {p: [] for p in positions}
        for rows in length_batches(requests.histories, self.chunk_size):
            tf = teacher_force(self.decoder, self.layout, requests.histories[rows], codes[requests.items[rows]],
                               codes)
            for p in positions:
                keys[p].append(tf.keys[p][layers[p]].cpu())
        return {p: (k := torch.cat(keys[p]).to(torch.float64)).T @ k for p in positions}

    def rebuild_key_stats(self, artifact: EditArtifact, codes: np.ndarray) -> EditArtifact:
        """A copy of ``artifact`` whose accumulated statistic is summed afresh from every batch's replayed keys."""
        out = EditArtifact(artifact.base_hash, list(artifact.layers), [], artifact.scheme)
        for b in artifact.batches:
            out.append(replace(b, key_cov=self.key_covariance(b, artifact.layers, codes)))
        return out

    def remove_newest(self, artifact: EditArtifact, codes: np.ndarray) -> tuple[EditArtifact, EditBatch]:
        """A copy of ``artifact`` without its newest batch (``EditArtifact.remove_newest``: outputs bit-identical
        to before the batch was added), the batch's keys replayed so that the statistic stays known (exact up to
        float64 rounding); and the removed batch."""
        out = artifact.copy()
        newest = artifact.batches[-1] if artifact.batches else None
        cov = self.key_covariance(newest, artifact.layers, codes) if newest and artifact.stats_known else None
        return out, out.remove_newest(cov)

    def truncated(self, artifact: EditArtifact, n: int, codes: np.ndarray) -> EditArtifact:
        """A copy of ``artifact`` with its first ``n`` batches only (ΔW bit-identical; the statistic minus the
        removed batches' replayed covariances, or summed afresh when that replays fewer batches)."""
        if not 0 <= n <= len(artifact.batches):
            raise ValueError(f"cannot keep {n} of {len(artifact.batches)} batches")
        if n < len(artifact.batches) - n or not artifact.stats_known:
            kept = artifact.copy()
            kept.batches, kept.key_stats, kept.stats_of = kept.batches[:n], None, None
            return self.rebuild_key_stats(kept, codes)
        out = artifact
        while len(out.batches) > n:
            out, _ = self.remove_newest(out, codes)
        return out.copy()

    def replace_items(self, artifact: EditArtifact, items: np.ndarray, feedback: EditRequests, codes: np.ndarray,
                      item_ids: list[str]) -> tuple[EditArtifact, list[EditReport]]:
        """Re-edit on feedback: drop the earlier edits of ``items`` (catalog indices into ``codes``) and edit them
        from ``feedback`` (e.g. their observed interactions), with exact replacement semantics:

        Let the artifact hold batches B_1..B_n (each with its stored requests) and let B_i be the first whose
        requests teach one of ``items``. The result is, within float tolerance (bit-identical for B_1..B_{i-1}),
        the artifact that editing from scratch would give for the sequence B_1, .., B_{i-1}, B'_i, .., B'_n, F:
        B'_j is B_j's requests without the rows that teach ``items``, solved again with B_j's λ on the stack below
        it (a batch left without requests stays in place as an empty batch: no ΔW, no items); F is ``feedback``,
        solved with the config's λ. Batch ids are kept (F gets a new one); the layer map never changes.

        Costs as much as editing B_i..B_n again. Returns the artifact and the reports of B'_i..B'_n and F."""
        items = np.unique(np.asarray(items, np.int64))
        self._check_replacement(artifact, items, feedback)
        first = next(j for j, b in enumerate(artifact.batches) if np.isin(b.requests.items, items).any())
        compacted = [b.batch_id for b in artifact.batches[first:] if b.compacted]
        if compacted:
            raise ArtifactMismatchError(f"batch {compacted[0]} is compacted: the batches folded into it cannot be "
                                        "edited again one by one (re-edit before compacting them)")
        out = self.truncated(artifact, first, codes)
        reports = []
        for old in artifact.batches[first:]:
            keep = np.flatnonzero(~np.isin(old.requests.items, items))
            out, report = self.solved_again(out, old, old.requests.subset(keep), codes, item_ids)
            reports += [report] if report is not None else []
        out, report = self.edit(feedback, codes, item_ids, out)
        return out, reports + [report]

    def solved_again(self, artifact: EditArtifact, batch: EditBatch, requests: EditRequests, codes: np.ndarray,
                     item_ids: list[str]) -> tuple[EditArtifact, EditReport | None]:
        """``artifact`` plus ``batch`` solved again from ``requests`` on top of it, with the batch's λ and id kept;
        ``requests`` empty: the batch stays in place emptied (no ΔW, no items; report None). What ``replace_items``
        does to each later batch, and what a rollback below a batch does to it."""
        if len(requests) == 0:
            out = artifact.copy()
            out.append(_emptied(batch, codes.shape[1]))
            return out, None
        memory = self.memorize(requests, codes, artifact)
        out, report = self.solve(memory, codes, item_ids, batch.meta.get("lam"))
        return out.with_newest_id(batch.batch_id), report

    @staticmethod
    def _check_replacement(artifact: EditArtifact, items: np.ndarray, feedback: EditRequests) -> None:
        """Refuse a re-edit that cannot be exact, before anything is computed."""
        if len(items) == 0 or len(feedback) == 0:
            raise EmptyInputError("a re-edit needs the items to replace and feedback requests that teach them")
        stray = np.setdiff1d(feedback.items, items)
        if len(stray):
            raise ConfigError(f"feedback requests teach items not being replaced (catalog indices "
                              f"{stray[:5].tolist()})")
        missing = [b.batch_id for b in artifact.batches if b.requests is None]
        if missing:
            raise ArtifactMismatchError(f"batches {', '.join(missing[:3])} hold no requests (a format-1 or compacted "
                                        "artifact of them): they cannot be edited again")
        taught = np.concatenate([b.requests.items for b in artifact.batches]) if artifact.batches else np.zeros(0)
        unknown = np.setdiff1d(items, taught)
        if len(unknown):
            raise ConfigError(f"items {unknown[:5].tolist()} (catalog indices) are not edited by this artifact")

    def _fit_gates(self, keys: dict[int, list[torch.Tensor]], sites: list[tuple[int, int]],
                   requests: EditRequests, codes: np.ndarray) -> dict[int, KeyGate]:
        """One probe gate per edited site: this batch's request keys vs training keys (pseudo-history sources
        excluded, as for the layer probe)."""
        rng = np.random.default_rng(self.cfg.seed + 3)
        neg = negative_samples(len(self.train), requests, 4 * self.cfg.probe_samples, rng)
        neg_keys = collect_keys(self.decoder, self.layout, self.train.histories[neg], codes[self.train.targets[neg]],
                                codes, sites, desc="gate keys (training)")
        gates = {}
        for layer, p in sites:
            pos = torch.cat(keys[p])
            pos = pos[torch.from_numpy(rng.permutation(len(pos))[: 4 * self.cfg.probe_samples])]
            gates[p] = fit_gate(pos, neg_keys[(layer, p)], self.cfg.gate_fpr, self.cfg.seed, self.decoder.device)
        return gates

    @torch.no_grad()
    def efficacy(self, requests: EditRequests, codes: np.ndarray, artifact: EditArtifact,
                 previous: EditArtifact | None, before: list[float] | None = None) -> dict:
        """Teacher-forced share of (a sample of) requests whose o_p is the argmax at position p: on the model
        before this batch, and with this batch's update (docs/method.md §3.1: the first diagnostic). Runs the cached
        decoder with each artifact's own decoding schedule, exactly as recommendations are made. ``before``: the
        first share when already known (it does not depend on this batch's ΔW), so only the edited model runs."""
        rng = np.random.default_rng(self.cfg.seed + 2)
        idx = np.sort(rng.choice(len(requests), min(len(requests), self.cfg.efficacy_samples), replace=False))
        sample = requests.subset(idx)
        hits = {"before": np.zeros(self.n_pos), "after": np.zeros(self.n_pos)}
        schedules = {"after": artifact.schedule(self.trigger, self.decoder.device)}
        if before is None:
            schedules["before"] = previous.schedule(self.trigger, self.decoder.device) if previous else None
        device = self.decoder.device
        for rows in length_batches(sample.histories, self.chunk_size):
            target_codes = codes[sample.items[rows]]
            ids, mask = self.layout.encoder_inputs(sample.histories[rows], codes)
            enc = self.decoder.encode(ids.to(device), mask.to(device))
            dec_in = self.layout.decoder_inputs(target_codes)[0].to(device)
            target = torch.from_numpy(target_codes).to(device)
            for name, schedule in schedules.items():
                cache = DecoderCache()
                for p in range(self.n_pos):
                    out, cache = self.decoder.step(dec_in[:, p], cache, enc, schedule(p) if schedule else None,
                                                   prefix=target[:, :p])
                    pred = out.logits[:, self.layout.position_slice(p)].argmax(1)
                    hits[name][p] += float((pred == target[:, p]).sum())
        n = max(len(sample), 1)
        return {"before": (hits["before"] / n).round(4).tolist() if before is None else list(before),
                "after": (hits["after"] / n).round(4).tolist(), "n_sampled": len(sample)}


def _emptied(batch: EditBatch, n_pos: int) -> EditBatch:
    """``batch`` with every request and edit taken out (its place and id in the stack kept)."""
    none = batch.requests.subset(np.zeros(0, np.int64))
    return EditBatch(batch.batch_id, [], np.zeros((0, n_pos), np.int64), {}, {},
                     {**batch.meta, "emptied": True}, {}, none)
