"""What every comparison baseline (docs/method.md §6) is: fitted on a run's training split, asked for top-K item lists.

A baseline is built from a typed config (``registry.make``), fitted with ``fit(run, out_dir)`` and queried with
``recommend(cases, k)``, which returns the same ``[n_cases, k]`` item-index lists the TIGER beams give, so
``runs.evaluate.score_topk`` scores every system the same way. ``fit`` writes ``baseline.json`` (name, config,
data fingerprint, training history) and ``weights.safetensors`` into ``out_dir``; a later ``fit`` with the same
config on the same data loads them instead of training again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from genrecedit.atomic import write_json
from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.runs.backbone import LoadedRun

FIT_FILE = "baseline.json"
WEIGHTS_FILE = "weights.safetensors"
RUNTIME_KEYS = ("device", "eval_batch_size")  # config keys that do not change what is learned


@dataclass(frozen=True)
class BaselineData:
    """What a baseline may learn from: training samples, validation cases (for early stopping / tuning), the
    catalog size and the item text embeddings.

    train / valid: CaseSets over item indices ``0..n_items-1`` (histories [n, L] left-padded with PAD_ITEM).
    embeddings: [n_items, d] float item text embeddings, or None for baselines that do not read text.
    """

    train: CaseSet
    valid: CaseSet
    n_items: int
    embeddings: np.ndarray | None = None

    @staticmethod
    def from_run(run: LoadedRun) -> BaselineData:
        split = run.prepared.split
        return BaselineData(split.train, split.valid, split.n_items, run.prepared.embeddings)

    @property
    def max_history(self) -> int:
        return int(self.train.histories.shape[1])

    def seen_items(self) -> np.ndarray:
        """[n_items] bool: items that occur in a training sample (history or target) — the items an item-ID model
        has an embedding for."""
        seen = np.zeros(self.n_items, dtype=bool)
        hist = self.train.histories
        seen[hist[hist != PAD_ITEM]] = True
        seen[self.train.targets] = True
        return seen

    def fingerprint(self) -> str:
        """A short hash of the training and validation data, so saved weights are reused only on the same data."""
        h = hashlib.sha256()
        for arr in (self.train.histories, self.train.targets, self.valid.histories, self.valid.targets):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update(str(self.n_items).encode())
        if self.embeddings is not None:
            h.update(np.ascontiguousarray(self.embeddings[:, :8], dtype=np.float32).tobytes())
        return h.hexdigest()[:16]


@dataclass
class FitResult:
    """How fitting went: best validation NDCG@10, its epoch, epochs run, wall seconds, per-epoch history;
    ``reused`` when the weights were loaded from an earlier fit."""

    best_valid_ndcg10: float = float("nan")
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    reused: bool = False


class Baseline(ABC):
    """A recommender the edit is compared with. Subclasses set ``name`` and ``config_class``."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, cfg: Any | None = None) -> None:
        self.cfg = cfg if cfg is not None else self.config_class()
        validate = getattr(self.cfg, "validate", None)
        if validate is not None:
            validate()
        self.fit_result = FitResult()

    @abstractmethod
    def fit(self, run: LoadedRun, out_dir: Path | None = None) -> FitResult:
        """Learn from ``run``'s training split (tuning on its validation split); save into ``out_dir`` when given,
        or reuse what an earlier fit with the same config and data saved there."""

    @abstractmethod
    def recommend(self, cases: CaseSet, k: int) -> np.ndarray:
        """[n_cases, k] int64 item indices, best first, PAD_ITEM (-1) where fewer than k items can be ranked."""

    @abstractmethod
    def restore(self, meta: dict, out_dir: Path, run: LoadedRun | None) -> None:
        """Load what ``fit`` saved in ``out_dir`` (``meta`` is its ``baseline.json``)."""

    def describe(self) -> dict:
        """The JSON record written next to the weights."""
        return {"name": self.name, "config": dataclasses.asdict(self.cfg),
                "fit": dataclasses.asdict(self.fit_result)}


def config_from(cls: type, params: dict | None) -> Any:
    """A typed config dataclass from a plain mapping (YAML values), with the run config's checks: unknown keys,
    wrong types and invalid Literal values raise ConfigError."""
    from genrecedit.config import _build  # the one typed-config builder; shared rather than copied

    return _build(cls, dict(params or {}), cls.__name__)


def read_fit(out_dir: Path) -> dict | None:
    """``out_dir/baseline.json`` as a dict, or None when there is none."""
    path = Path(out_dir) / FIT_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactMismatchError(f"{path} is not valid JSON ({err}); delete it to fit again") from err


def can_reuse(meta: dict | None, name: str, cfg: Any, fingerprint: str) -> bool:
    """True when a saved fit is of this baseline, with this config (runtime keys aside: weights fitted on a GPU
    serve a CPU run), on this data."""
    if meta is None or meta.get("name") != name or meta.get("fingerprint") != fingerprint:
        return False
    learned = lambda c: {k: v for k, v in c.items() if k not in RUNTIME_KEYS}  # noqa: E731
    return learned(meta.get("config", {})) == learned(json.loads(json.dumps(dataclasses.asdict(cfg))))


def write_fit(out_dir: Path, record: dict) -> None:
    write_json(Path(out_dir) / FIT_FILE, record)


def topk_from_scores(scores: torch.Tensor, k: int) -> np.ndarray:
    """[n, n_items] scores (-inf: cannot be recommended) -> [n, k] int64 item indices, best first, PAD_ITEM where
    fewer than k items have a finite score."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    n, n_items = scores.shape
    width = min(k, n_items)
    top, idx = scores.float().topk(width, dim=1, sorted=True)
    out = torch.where(torch.isfinite(top), idx, torch.full_like(idx, PAD_ITEM)).cpu().numpy().astype(np.int64)
    if width < k:
        out = np.concatenate([out, np.full((n, k - width), PAD_ITEM, np.int64)], axis=1)
    return out
