"""Edit artifacts: ΔW per position and batch, the layer map and metadata; apply (as a decoding schedule),
save/load (safetensors + JSON, atomic), remove the newest batch exactly, refuse a mismatched base model."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genrecedit.atomic import atomic_directory
from genrecedit.edit.gate import KeyGate
from genrecedit.errors import ArtifactMismatchError
from genrecedit.model.beam import EditSchedule, PreservingSchedule
from genrecedit.model.decoder import FFNEdit, StepEdits, prefix_keys

TriggerMode = Literal["one_one", "prefix", "preserve", "all"]
MANIFEST = "edits.json"


@dataclass
class EditBatch:
    """One batch of injected items. delta_w[p]: [d_model, d_ff] float64; key_cov[p]: K1 K1ᵀ [d_ff, d_ff] float64
    of this batch (what later batches add to their solve)."""

    batch_id: str
    item_ids: list[str]
    sids: np.ndarray
    delta_w: dict[int, torch.Tensor]
    key_cov: dict[int, torch.Tensor]
    meta: dict = field(default_factory=dict)
    gates: dict[int, KeyGate] = field(default_factory=dict)  # optional probe gate per position (gate.py)


@dataclass
class EditArtifact:
    """All edit batches applied to one base model (identified by its weights hash); layers[p] = l_p.

    scheme ``position_wise`` (GenRecEdit) keeps one ΔW per position; ``object_wise`` (the "w/o position-wise"
    ablation) keeps a single ΔW under position 0 that acts like a weight edit: it fires at every index and step.
    """

    base_hash: str
    layers: list[int]
    batches: list[EditBatch] = field(default_factory=list)
    scheme: str = "position_wise"

    def check_base(self, base_hash: str) -> None:
        if base_hash != self.base_hash:
            raise ArtifactMismatchError(
                f"edit artifact was computed on base model {self.base_hash[:12]}, not on {base_hash[:12]}; "
                "recompute the edit for this model"
            )

    def total_delta(self, p: int) -> torch.Tensor | None:
        """Σ over batches of ΔW_p, summed in float64 in batch order (so removing the newest batch restores the
        previous sum bit for bit) and returned as float32 [d_model, d_ff]; None if no batch edits position p."""
        parts = [b.delta_w[p] for b in self.batches if p in b.delta_w]
        if not parts:
            return None
        total = parts[0].to(torch.float64).clone()
        for part in parts[1:]:
            total += part.to(torch.float64)
        return total.to(torch.float32)

    def previous_cov(self, p: int) -> torch.Tensor | None:
        parts = [b.key_cov[p] for b in self.batches if p in b.key_cov]
        return torch.stack(parts).sum(0) if parts else None

    def schedule(self, mode: TriggerMode = "one_one", device: torch.device | str = "cpu") -> EditSchedule | None:
        """The decoding schedule: ``one_one`` fires ΔW_t at step t only (the paper); ``prefix`` is one-one
        triggering that fires a batch's ΔW_t (t ≥ 1) only on beams whose decoded prefix c_0..c_{t-1} begins one of
        that batch's items' SIDs: the edited items score exactly as under ``one_one``, and beams that cannot lead to
        an edited item are left as the base model scores them; ``preserve`` fires as ``prefix`` and scores every
        item that no batch edits with the unedited model (its score does not move; only the edited items enter the
        ranking, with their edited scores); ``all`` fires every ΔW at every step and caches the edited stream (the
        paper's w/o one-one triggering ablation). An object-wise edit has no positions to trigger by, so it is
        always ``all``."""
        if mode not in get_args(TriggerMode):
            raise ValueError(f"unknown trigger mode {mode!r}: one of {', '.join(get_args(TriggerMode))}")
        if mode == "preserve" and self.scheme != "position_wise":
            raise ValueError("trigger 'preserve' needs a position-wise edit (an object-wise edit fires everywhere)")
        per_batch = mode in ("prefix", "preserve") and self.scheme == "position_wise"
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

    def remove_newest(self) -> EditBatch:
        """Exact rollback of the newest batch. Removing an older one would change what later batches solved
        against: that means recomputing them (the service does it), not subtracting."""
        if not self.batches:
            raise ArtifactMismatchError("no edit batch to remove")
        return self.batches.pop()

    def item_ids(self) -> list[str]:
        return [i for b in self.batches for i in b.item_ids]

    def save(self, out_dir: Path) -> None:
        """Write the manifest and one safetensors file per batch into a temp dir, then swap it in."""
        with atomic_directory(out_dir) as tmp:
            manifest = {"base_hash": self.base_hash, "layers": self.layers, "scheme": self.scheme, "batches": []}
            for i, b in enumerate(self.batches):
                tensors = {f"delta_w.{p}": d.contiguous() for p, d in b.delta_w.items()}
                tensors.update({f"key_cov.{p}": c.contiguous() for p, c in b.key_cov.items()})
                for p, g in b.gates.items():
                    tensors[f"gate_w.{p}"], tensors[f"gate_b.{p}"] = g.weight.contiguous(), g.bias.reshape(1)
                tensors["sids"] = torch.from_numpy(np.ascontiguousarray(b.sids))
                save_file(tensors, str(tmp / f"batch-{i:04d}.safetensors"))
                manifest["batches"].append({"batch_id": b.batch_id, "item_ids": b.item_ids, "meta": b.meta})
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

    @staticmethod
    def load(path: Path, base_hash: str | None = None) -> "EditArtifact":
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise ArtifactMismatchError(f"{path} is not an edit artifact (no {MANIFEST})")
        manifest = json.loads((path / MANIFEST).read_text())
        batches = []
        for i, b in enumerate(manifest["batches"]):
            tensors = load_file(str(path / f"batch-{i:04d}.safetensors"))
            delta = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("delta_w.")}
            cov = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("key_cov.")}
            gates = {int(k.split(".")[1]): KeyGate(v, tensors[f"gate_b.{k.split('.')[1]}"][0])
                     for k, v in tensors.items() if k.startswith("gate_w.")}
            batches.append(EditBatch(b["batch_id"], b["item_ids"], tensors["sids"].numpy(), delta, cov, b["meta"],
                                     gates))
        artifact = EditArtifact(manifest["base_hash"], manifest["layers"], batches,
                                manifest.get("scheme", "position_wise"))
        if base_hash is not None:
            artifact.check_base(base_hash)
        return artifact


def _prefix_set(sids: np.ndarray, p: int, device: torch.device | str) -> torch.Tensor:
    """Sorted unique ``prefix_keys`` of the first p codes of a batch's item SIDs [n, P]."""
    return torch.unique(prefix_keys(torch.from_numpy(np.ascontiguousarray(sids[:, :p])).long())).to(device)
