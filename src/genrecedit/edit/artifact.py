"""Edit artifacts: ΔW per position and batch, the layer map, one accumulated key statistic per edit site and
metadata; apply (as a decoding schedule), save/load (safetensors + JSON, atomic), remove the newest batch exactly,
compact the oldest batches into one, refuse a mismatched base model.

On disk (``FORMAT`` 2): ``edits.json`` (manifest), ``key_stats.safetensors`` (Σ K Kᵀ per position over every batch,
float64 [d_ff, d_ff], once for the whole stack) and one ``batch-NNNN.safetensors`` per batch holding only what
decoding, rollback and a re-edit need: ΔW per position in the dtype it was made in (float32 for the editor's batches),
the items' SIDs, the probe gates and the batch's requests (histories, items, sources; int32), from which the editor
replays the batch's keys. Artifacts of format 1 (a float64 ``key_cov.p`` in every batch file) still load: their
covariances are summed into the accumulated statistic.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genrecedit.atomic import atomic_directory
from genrecedit.edit.gate import KeyGate
from genrecedit.edit.knowledge import EditRequests
from genrecedit.errors import ArtifactMismatchError
from genrecedit.model.beam import EditSchedule, PreservingSchedule
from genrecedit.model.decoder import FFNEdit, StepEdits, prefix_keys

TriggerMode = Literal["one_one", "prefix", "preserve", "all"]
MANIFEST = "edits.json"
KEY_STATS = "key_stats.safetensors"
FORMAT = 2
COMPACTED = "compacted_from"  # meta key of a compacted batch: the ids of the batches folded into it
SUMMED_MODES = ("one_one", "all")  # trigger modes that fire the sum of all batches' ΔW_p (no per-batch gate)


@dataclass
class EditBatch:
    """One batch of injected items. delta_w[p]: [d_model, d_ff] (float32 from the editor; float64 in older
    artifacts and compacted batches); key_cov[p]: this batch's K1 K1ᵀ [d_ff, d_ff] float64, only while the batch is
    on its way into an artifact (``EditArtifact.append`` folds it into the accumulated statistic and keeps a copy of
    the batch without it) or in a batch loaded from a format-1 artifact; requests: the knowledge it was solved from
    (item indices into the catalog codes it was edited with), None where unknown (format-1 artifacts)."""

    batch_id: str
    item_ids: list[str]
    sids: np.ndarray
    delta_w: dict[int, torch.Tensor]
    key_cov: dict[int, torch.Tensor]
    meta: dict = field(default_factory=dict)
    gates: dict[int, KeyGate] = field(default_factory=dict)  # optional probe gate per position (gate.py)
    requests: EditRequests | None = None

    @property
    def compacted(self) -> bool:
        return COMPACTED in self.meta


@dataclass(frozen=True)
class StoredFile:
    """A batch file as written: its path and identity (device, inode, size, modification time in ns). Batch files
    are never rewritten in place, so a file with this identity holds exactly what was written."""

    path: Path
    ident: tuple[int, int, int, int]

    @staticmethod
    def of(path: Path) -> "StoredFile":
        st = os.stat(path)
        return StoredFile(Path(path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))

    def link(self, dst: Path) -> bool:
        """Hard-link this file to ``dst`` if it is still there unchanged; False where it is gone or the file system
        cannot link (the caller writes the batch instead)."""
        try:
            if StoredFile.of(self.path).ident != self.ident:
                return False
            os.link(self.path, dst)
            if StoredFile.of(dst).ident != self.ident:  # the path was replaced between the check and the link
                os.unlink(dst)
                return False
            return True
        except OSError:
            return False


@dataclass
class EditArtifact:
    """All edit batches applied to one base model (identified by its weights hash); layers[p] = l_p.

    scheme ``position_wise`` (GenRecEdit) keeps one ΔW per position; ``object_wise`` (the "w/o position-wise"
    ablation) keeps a single ΔW under position 0 that acts like a weight edit: it fires at every index and step.

    key_stats[p]: Σ over every batch of K1 K1ᵀ at position p's edit site (float64 [d_ff, d_ff]), what the next batch
    solves against (``previous_cov``); None while unknown (a batch was removed without its covariance): the editor
    rebuilds it from the batches' requests (``ColdItemEditor.rebuild_key_stats``). Add batches with ``append`` and
    remove them with ``remove_newest``: the statistic follows. Built from a list of batches that all carry their
    ``key_cov`` (or from none), the statistic is their sum; otherwise it is unknown.
    """

    base_hash: str
    layers: list[int]
    batches: list[EditBatch] = field(default_factory=list)
    scheme: str = "position_wise"
    key_stats: dict[int, torch.Tensor] | None = None
    # the batch ids the statistic sums over: previous_cov refuses a statistic that does not match the batches
    stats_of: tuple[str, ...] | None = None
    # id(batch) -> (that batch, the file it was loaded from or last saved to): ``save`` hard-links an unchanged
    # batch's file instead of writing it again, ``load(reuse=)`` keeps a batch whose file it already read
    stored: dict[int, tuple[EditBatch, StoredFile]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.key_stats is None and all(set(b.delta_w) <= set(b.key_cov) for b in self.batches):
            stats: dict[int, torch.Tensor] = {}
            for b in self.batches:
                _fold(stats, b.key_cov, +1)
            self.key_stats = stats
        if self.key_stats is not None and self.stats_of is None:
            self.stats_of = self.batch_ids()

    def check_base(self, base_hash: str) -> None:
        if base_hash != self.base_hash:
            raise ArtifactMismatchError(
                f"edit artifact was computed on base model {self.base_hash[:12]}, not on {base_hash[:12]}; "
                "recompute the edit for this model"
            )

    def batch_ids(self) -> tuple[str, ...]:
        return tuple(b.batch_id for b in self.batches)

    def copy(self) -> "EditArtifact":
        """A new artifact over the same (never mutated) batches and statistic tensors: appending to or removing
        from the copy leaves this one as it is."""
        return replace(self, layers=list(self.layers), batches=list(self.batches),
                       key_stats=None if self.key_stats is None else dict(self.key_stats), stored=dict(self.stored))

    def firing(self, keep: Callable[[EditBatch], bool]) -> "EditArtifact":
        """A view to decode with: only the batches ``keep`` accepts fire (their ΔW, summed in batch order); it
        carries no key statistic, so it is never edited further."""
        return EditArtifact(self.base_hash, list(self.layers), [b for b in self.batches if keep(b)], self.scheme,
                            key_stats={}, stats_of=())

    def stored_file(self, batch: EditBatch) -> StoredFile | None:
        """Where ``batch`` (this very object) was loaded from or last saved to, if known."""
        entry = self.stored.get(id(batch))
        return entry[1] if entry is not None and entry[0] is batch else None

    def total_delta(self, p: int) -> torch.Tensor | None:
        """Σ over batches of ΔW_p, summed in float64 in batch order (so removing the newest batch restores the
        previous sum bit for bit) and returned as float32 [d_model, d_ff]; None if no batch edits position p."""
        total = self._sum_delta(p, self.batches)
        return None if total is None else total.to(torch.float32)

    @staticmethod
    def _sum_delta(p: int, batches: list[EditBatch]) -> torch.Tensor | None:
        parts = [b.delta_w[p] for b in batches if p in b.delta_w]
        if not parts:
            return None
        total = parts[0].to(torch.float64).clone()
        for part in parts[1:]:
            total += part.to(torch.float64)
        return total

    @property
    def stats_known(self) -> bool:
        return self.key_stats is not None and self.stats_of == self.batch_ids()

    def previous_cov(self, p: int) -> torch.Tensor | None:
        """Σ K Kᵀ of every batch at position p's site (None: no batch edits p), what a batch stacked on this
        artifact adds to its solve. Raises when the statistic is unknown or does not match the batches."""
        if not self.stats_known:
            raise ArtifactMismatchError(
                "the accumulated key statistic of this edit artifact is unknown or does not cover its batches "
                f"(batches {len(self.batches)}, statistic of {len(self.stats_of or ())}): add batches with "
                "EditArtifact.append, or rebuild it with ColdItemEditor.rebuild_key_stats")
        return self.key_stats.get(p)

    def append(self, batch: EditBatch) -> None:
        """Stack ``batch`` on top: its ``key_cov`` is added to the accumulated statistic, and the artifact keeps a
        copy of the batch without it. A batch without the covariance of a position it edits leaves the statistic
        unknown."""
        if self.stats_known and set(batch.delta_w) <= set(batch.key_cov):
            self.key_stats = dict(self.key_stats)
            _fold(self.key_stats, {p: batch.key_cov[p] for p in batch.delta_w}, +1)
            self.stats_of = self.batch_ids() + (batch.batch_id,)
        else:
            self.key_stats, self.stats_of = None, None
        self.batches.append(replace(batch, key_cov={}))

    def schedule(self, mode: TriggerMode = "one_one", device: torch.device | str = "cpu") -> EditSchedule | None:
        """The decoding schedule: ``one_one`` fires ΔW_t at step t only (the paper); ``prefix`` is one-one
        triggering that fires a batch's ΔW_t (t ≥ 1) only on beams whose decoded prefix c_0..c_{t-1} begins one of
        that batch's items' SIDs: the edited items score exactly as under ``one_one``, and beams that cannot lead to
        an edited item are left as the base model scores them; ``preserve`` fires as ``prefix`` and scores every
        item that no batch edits with the unedited model (its score does not move; only the edited items enter the
        ranking, with their edited scores); ``all`` fires every ΔW at every step and caches the edited stream (the
        paper's w/o one-one triggering ablation). An object-wise edit has no positions to trigger by, so it is
        always ``all``. A compacted batch holds the sum of its batches' ΔW, so it decodes only under ``one_one`` and
        ``all`` (``compacted``)."""
        if mode not in get_args(TriggerMode):
            raise ValueError(f"unknown trigger mode {mode!r}: one of {', '.join(get_args(TriggerMode))}")
        if mode == "preserve" and self.scheme != "position_wise":
            raise ValueError("trigger 'preserve' needs a position-wise edit (an object-wise edit fires everywhere)")
        per_batch = mode in ("prefix", "preserve") and self.scheme == "position_wise"
        if per_batch and any(b.compacted for b in self.batches):
            raise ArtifactMismatchError(f"trigger {mode!r} fires each batch's ΔW behind its own SID prefixes, and this "
                                        f"artifact holds a compacted batch (the sum of several): decode it with "
                                        f"{' or '.join(SUMMED_MODES)}")
        edits: dict[int, list[FFNEdit]] = {}
        for p in range(len(self.layers)):
            gated = per_batch and p > 0
            if gated or any(p in b.gates for b in self.batches):  # each batch's ΔW behind its own gate(s)
                edits[p] = [FFNEdit(self.layers[p], b.delta_w[p].float().to(device), b.gates.get(p),
                                    _prefix_set(b.sids, p, device) if gated else None)
                            for b in self.batches if p in b.delta_w]
            elif (d := self.total_delta(p)) is not None:
                edits[p] = [FFNEdit(self.layers[p], d.to(device))]
        if not edits:
            return None
        if mode == "all" or self.scheme == "object_wise":
            every = StepEdits([e for group in edits.values() for e in group], cache_edited=True)
            return lambda t: every
        per_step = {p: StepEdits(group) for p, group in edits.items()}
        if mode == "preserve":
            return PreservingSchedule(per_step.get, np.concatenate([b.sids for b in self.batches]))
        return lambda t: per_step.get(t)

    def remove_newest(self, key_cov: dict[int, torch.Tensor] | None = None) -> EditBatch:
        """Exact rollback of the newest batch: ``total_delta`` is recomputed in order from the remaining batches,
        so decoding outputs are bit-identical to those before it was added. The statistic loses the batch's
        covariance (``key_cov``, else the batch's own, else it becomes unknown: ``ColdItemEditor.remove_newest``
        replays the keys), exact up to float64 rounding. Removing an older batch would change what later batches
        solved against: that means recomputing them (the service and ``ColdItemEditor.replace_items`` do it)."""
        if not self.batches:
            raise ArtifactMismatchError("no edit batch to remove")
        batch = self.batches[-1]
        cov = key_cov if key_cov is not None else batch.key_cov
        known = self.stats_known and set(batch.delta_w) <= set(cov)
        self.batches.pop()
        if not self.batches:
            self.key_stats, self.stats_of = {}, ()
        elif known:
            self.key_stats = dict(self.key_stats)
            _fold(self.key_stats, {p: cov[p] for p in batch.delta_w}, -1)
            self.stats_of = self.batch_ids()
        else:
            self.key_stats, self.stats_of = None, None
        return batch

    def with_newest_id(self, batch_id: str) -> "EditArtifact":
        """A copy whose newest batch is named ``batch_id`` (the statistic follows)."""
        out = self.copy()
        out.batches[-1] = replace(out.batches[-1], batch_id=batch_id)
        if self.stats_known:
            out.stats_of = out.batch_ids()
        return out

    def compacted(self, mode: TriggerMode, keep_newest: int = 0, batch_id: str | None = None) -> "EditArtifact":
        """All batches but the newest ``keep_newest`` folded into one consolidated batch at the bottom of the stack:
        its ΔW_p is their float64 sum in batch order (stored in float64), so ``total_delta`` is bit-identical and
        decoding under ``mode`` gives identical outputs. Its items, SIDs and requests are theirs, concatenated; its
        meta lists their ids (``compacted_from``) and meta. The accumulated statistic is unchanged.

        Exact for ``one_one`` and ``all`` (and every object-wise artifact), which fire the sum of the batches' ΔW.
        ``prefix`` and ``preserve`` fire each batch's ΔW behind that batch's own SID prefixes, and a gated batch
        behind its own gate: no single ΔW gives those outputs, so compaction refuses them (``ValueError``) and
        writes nothing."""
        if mode not in get_args(TriggerMode):
            raise ValueError(f"unknown trigger mode {mode!r}: one of {', '.join(get_args(TriggerMode))}")
        if self.scheme == "position_wise" and mode not in SUMMED_MODES:
            raise ValueError(f"cannot compact for trigger {mode!r}: it fires each batch's ΔW behind that batch's SID "
                             f"prefixes, which one consolidated ΔW cannot reproduce; compaction is exact for "
                             f"{' and '.join(SUMMED_MODES)}")
        n = len(self.batches) - keep_newest
        if keep_newest < 0 or n < 2:
            raise ValueError(f"nothing to compact: {len(self.batches)} batches, keeping the newest {keep_newest} "
                             "(at least two must be folded)")
        folded = self.batches[:n]
        gated = [b.batch_id for b in folded if b.gates]
        if gated:
            raise ValueError(f"cannot compact gated batches ({', '.join(gated[:3])}): each fires behind its own gate")
        positions = sorted({p for b in folded for p in b.delta_w})
        merged = EditBatch(batch_id or f"compacted-{folded[0].batch_id}-{folded[-1].batch_id}",
                           [i for b in folded for i in b.item_ids], np.concatenate([b.sids for b in folded]),
                           {p: self._sum_delta(p, folded) for p in positions}, {},
                           {COMPACTED: [i for b in folded for i in b.meta.get(COMPACTED, [b.batch_id])],
                            "members": [{"batch_id": b.batch_id, "n_items": len(b.item_ids), "meta": b.meta}
                                        for b in folded]},
                           {}, _concat_requests([b.requests for b in folded]))
        out = self.copy()
        out.batches = [merged] + self.batches[n:]
        if self.stats_known:
            out.stats_of = out.batch_ids()
        return out

    def item_ids(self) -> list[str]:
        return [i for b in self.batches for i in b.item_ids]

    def save(self, out_dir: Path) -> None:
        """Write the manifest, the accumulated statistic (when known) and one safetensors file per batch into a
        temp dir, then swap it in. A batch this artifact loaded or saved before, unchanged (the same object), is
        hard-linked from that file: adding a batch to a long stack writes one batch, not the stack."""
        with atomic_directory(out_dir) as tmp:
            manifest = {"format": FORMAT, "base_hash": self.base_hash, "layers": self.layers, "scheme": self.scheme,
                        "key_stats": self.stats_known, "batches": []}
            if self.stats_known:
                save_file({f"key_stats.{p}": c.contiguous() for p, c in self.key_stats.items()} or
                          {"empty": torch.zeros(0)}, str(tmp / KEY_STATS))
            for i, b in enumerate(self.batches):
                known = self.stored_file(b)
                if known is None or not known.link(tmp / _batch_file(i)):  # an unchanged batch is linked
                    save_file(_batch_tensors(b), str(tmp / _batch_file(i)))
                manifest["batches"].append({"batch_id": b.batch_id, "item_ids": b.item_ids, "meta": b.meta})
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        self.stored = {id(b): (b, StoredFile.of(Path(out_dir) / _batch_file(i))) for i, b in enumerate(self.batches)}

    @staticmethod
    def load(path: Path, base_hash: str | None = None, reuse: "EditArtifact | None" = None) -> "EditArtifact":
        """Read an artifact of format 2 or 1 (whose per-batch covariances are summed into the statistic and kept
        on their batches, so that removing one needs no replay). ``reuse``: an artifact read or written before; a
        batch file that is one of its files (the same file, linked by a later save) is not read again, its batch
        is taken over — a follower loading the next version reads only the new batches."""
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise ArtifactMismatchError(f"{path} is not an edit artifact (no {MANIFEST})")
        manifest = json.loads((path / MANIFEST).read_text())
        if base_hash is not None and manifest["base_hash"] != base_hash:
            EditArtifact(manifest["base_hash"], manifest["layers"]).check_base(base_hash)
        known = {f.ident: b for b, f in reuse.stored.values()} if reuse is not None else {}
        batches, stored = [], {}
        for i, entry in enumerate(manifest["batches"]):
            file = StoredFile.of(path / _batch_file(i))
            batch = known.get(file.ident)
            if batch is None or batch.batch_id != entry["batch_id"]:
                batch = _batch_from(entry, load_file(str(file.path)))
            batches.append(batch)
            stored[id(batch)] = (batch, file)
        stats = None
        if manifest.get("key_stats") and (path / KEY_STATS).exists():
            stats = {int(k.split(".")[1]): v for k, v in load_file(str(path / KEY_STATS)).items()
                     if k.startswith("key_stats.")}
        return EditArtifact(manifest["base_hash"], manifest["layers"], batches, manifest.get("scheme", "position_wise"),
                            stats, stored=stored)


def _batch_file(i: int) -> str:
    return f"batch-{i:04d}.safetensors"


def _fold(stats: dict[int, torch.Tensor], covs: dict[int, torch.Tensor], sign: int) -> None:
    """stats[p] ± covs[p] in float64, as new tensors (the old ones may be shared with another artifact)."""
    for p, c in covs.items():
        c = c.to(torch.float64)
        if p in stats:
            stats[p] = stats[p] + c if sign > 0 else stats[p] - c
        elif sign > 0:
            stats[p] = c.clone()
        else:
            raise ArtifactMismatchError(f"cannot remove a key covariance at position {p}: the statistic has none")


def _concat_requests(parts: list[EditRequests | None]) -> EditRequests | None:
    if any(p is None for p in parts) or not parts:
        return None
    return EditRequests.concat(parts)


def _batch_tensors(b: EditBatch) -> dict[str, torch.Tensor]:
    tensors = {f"delta_w.{p}": d.contiguous() for p, d in b.delta_w.items()}
    for p, g in b.gates.items():
        tensors[f"gate_w.{p}"], tensors[f"gate_b.{p}"] = g.weight.contiguous(), g.bias.reshape(1)
    tensors["sids"] = torch.from_numpy(np.ascontiguousarray(b.sids))
    if b.requests is not None:
        for name in ("histories", "items", "sources"):
            values = np.asarray(getattr(b.requests, name))
            if values.size and (values.max() >= 2**31 or values.min() < -2**31):
                raise ValueError(f"request {name} do not fit int32")
            tensors[f"requests.{name}"] = torch.from_numpy(np.ascontiguousarray(values, np.int32))
    return tensors


def _batch_from(entry: dict, tensors: dict[str, torch.Tensor]) -> EditBatch:
    def by_position(prefix: str) -> dict[int, torch.Tensor]:
        return {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith(prefix)}

    gates = {p: KeyGate(w, tensors[f"gate_b.{p}"][0]) for p, w in by_position("gate_w.").items()}
    requests = None
    if "requests.items" in tensors:
        requests = EditRequests(*(tensors[f"requests.{n}"].numpy().astype(np.int64)
                                  for n in ("histories", "items", "sources")))
    return EditBatch(entry["batch_id"], entry["item_ids"], tensors["sids"].numpy(), by_position("delta_w."),
                     by_position("key_cov."), entry["meta"], gates, requests)


def _prefix_set(sids: np.ndarray, p: int, device: torch.device | str) -> torch.Tensor:
    """Sorted unique ``prefix_keys`` of the first p codes of a batch's item SIDs [n, P]."""
    return torch.unique(prefix_keys(torch.from_numpy(np.ascontiguousarray(sids[:, :p])).long())).to(device)
