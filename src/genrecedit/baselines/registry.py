"""Baselines by name: ``make("sasrec", {"epochs": 20})``, and loading a fitted one back from its directory."""
from __future__ import annotations

from pathlib import Path

from genrecedit.baselines.base import Baseline, config_from, read_fit
from genrecedit.baselines.bert4rec import BERT4Rec
from genrecedit.baselines.sasrec import SASRec
from genrecedit.baselines.specgr import SpecGR
from genrecedit.baselines.vqrec import VQRec
from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.runs.backbone import LoadedRun

BASELINES: dict[str, type[Baseline]] = {cls.name: cls for cls in (SASRec, BERT4Rec, VQRec, SpecGR)}


def make(name: str, params: dict | None = None) -> Baseline:
    """An unfitted baseline ``name`` with its config built from ``params`` (plain YAML values)."""
    cls = BASELINES.get(name)
    if cls is None:
        raise ConfigError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    return cls(config_from(cls.config_class, params))


def load_baseline(out_dir: Path, run: LoadedRun | None = None, device: str | None = None) -> Baseline:
    """The baseline a ``fit`` saved in ``out_dir`` (SpecGR also needs the ``run`` it verifies with), on ``device``
    (default: the one it was fitted on)."""
    meta = read_fit(out_dir)
    if meta is None:
        raise ArtifactMismatchError(f"{out_dir} holds no fitted baseline (no baseline.json)")
    params = dict(meta["config"])
    if device is not None and "device" in params:
        params["device"] = device
    baseline = make(meta["name"], params)
    baseline.restore(meta, Path(out_dir), run)
    return baseline
