"""Train a backbone into a run directory, and load a run directory back as a ready ``Recommender``."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from genrecedit.config import RunConfig, load_config
from genrecedit.data.protocols import save_split_summary, split_summary
from genrecedit.errors import ArtifactMismatchError
from genrecedit.model.distributed import barrier, init_from_env
from genrecedit.model.recommender import Recommender
from genrecedit.model.tiger import load_model
from genrecedit.model.train import TrainResult, train_tiger
from genrecedit.runs.prepare import Prepared, configure_runtime, layout_for, prepare
from genrecedit.atomic import write_json

CONFIG_FILE = "config.yaml"
MODEL_DIR = "model"


@dataclass
class LoadedRun:
    """A trained run: its config, prepared data, the (unedited) recommender and the base model's hash."""

    run_dir: Path
    config: RunConfig
    prepared: Prepared
    recommender: Recommender
    base_hash: str

    def with_settings(self, section: str, **values) -> "LoadedRun":
        """The same run with some settings of one config section replaced (``run.with_settings("edit", lam=3)``):
        no reload, the data and model are shared."""
        return replace(self, config=replace(self.config, **{section: replace(getattr(self.config, section),
                                                                            **values)}))


def train_backbone(cfg: RunConfig, run_dir: Path, resume: bool = True) -> tuple[Prepared, TrainResult]:
    """prepare → train; writes config.yaml, split_summary.json, tokenizer/, model/ and train.json into run_dir.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this: the process group is joined from the
    environment, rank 0 prepares (and writes the tokenizer and caches) while the others wait and then read what it
    wrote, all train together (``model/train.py``) and only rank 0 writes."""
    run_dir = Path(run_dir)
    ctx = init_from_env(cfg.device)
    configure_runtime(cfg)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG_FILE)
        prepared = prepare(cfg, run_dir)
        save_split_summary(split_summary(prepared.split), run_dir / "split_summary.json")
        write_json(run_dir / "tokenizer_stats.json", prepared.tokenizer.stats())
    barrier(ctx)
    if not ctx.is_main:
        prepared = prepare(cfg, run_dir)  # rank 0's tokenizer and embedding cache: the same SIDs
    train_cfg = replace(cfg.train, device=cfg.device, seed=cfg.seed)
    t0 = time.perf_counter()
    result = train_tiger(prepared.split.train, prepared.split.valid, prepared.codes, layout_for(prepared.tokenizer),
                         cfg.model, train_cfg, run_dir / MODEL_DIR, prepared.tokenizer.quantizer_hash(), resume,
                         ctx=ctx)
    if ctx.is_main:
        write_json(run_dir / "train.json", {**asdict(result), "wall_seconds": time.perf_counter() - t0,
                                            "prepare_seconds": prepared.timings_s, "processes": ctx.world})
    barrier(ctx)
    return prepared, result


def load_run(run_dir: Path, overrides: list[str] | None = None) -> LoadedRun:
    """A run directory written by ``train_backbone`` -> config, data, recommender (on ``config.device``)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists() or not (run_dir / MODEL_DIR / "model.json").exists():
        raise ArtifactMismatchError(f"{run_dir} is not a trained run (needs {CONFIG_FILE} and {MODEL_DIR}/)")
    cfg = load_config(run_dir / CONFIG_FILE, overrides)
    configure_runtime(cfg)
    prepared = prepare(cfg, run_dir)
    model, _, layout, meta = load_model(run_dir / MODEL_DIR, cfg.device, prepared.tokenizer.quantizer_hash())
    if layout != layout_for(prepared.tokenizer):
        raise ArtifactMismatchError(f"{run_dir}: model token layout {layout.sizes} does not match the tokenizer")
    model.requires_grad_(False)  # a loaded run is only decoded and edited, never trained: no weight gradients
    return LoadedRun(run_dir, cfg, prepared, Recommender(model, layout, prepared.codes), meta.weights_hash)

