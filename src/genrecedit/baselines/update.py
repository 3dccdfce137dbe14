"""Update baselines (docs/method.md §5.9, §6): teach a trained run new items by training instead of editing.

* **Retrain**: the base model's own recipe (same config, stopping rule, threads) from scratch on the training
  samples plus the edit's pseudo interactions.
* **Finetune**: the base checkpoint, trained further on the pseudo interactions only.

Both take the same ``EditRequests`` an edit takes, so the three updates teach the same knowledge, and both measure
wall time and peak memory the way the benchmarks measure an edit (``measure``).
"""
from __future__ import annotations

import dataclasses
import math
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from genrecedit.atomic import write_json
from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.edit.knowledge import EditRequests
from genrecedit.errors import ConfigError, EmptyInputError, UnknownItemError
from genrecedit.model.recommender import Recommender
from genrecedit.model.tiger import load_model, save_model, weights_hash
from genrecedit.model.train import train_epoch, train_tiger
from genrecedit.runs.backbone import MODEL_DIR, LoadedRun
from genrecedit.runs.prepare import layout_for

RESULT_FILE = "update.json"
# Retrain keeps the recipe; only these TrainConfig fields may be changed, to bound its cost.
BUDGET_KEYS = ("epochs", "max_minutes", "patience", "eval_cases")


def peak_rss_mb() -> float:
    """The process's peak resident set size, in MiB: Linux ``VmHWM`` (``/proc/self/status``, the mark that
    ``reset_peak_rss`` resets), else ``resource.getrusage`` (KiB on Linux, bytes on macOS). getrusage is not used
    on Linux because it also keeps the peak that exited threads saw, which a reset cannot clear."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float | None:
    """The process's resident set size now, in MiB (Linux ``/proc/self/statm``; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize() / (1024 * 1024)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ≥ 4.0, ``/proc/self/clear_refs``), so that
    ``peak_rss_mb`` afterwards reports the peak of what follows; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Measurement:
    """Wall and CPU seconds of a block (CPU: ``time.process_time``, all threads of the process; on a shared
    machine it is the fairer measure of work) and its memory: ``peak_rss_mb`` is the process's peak RSS during the block
    (``peak_rss_mb`` after resetting the peak mark at its start; where the mark cannot be reset,
    ``peak_reset`` is False and the peak may predate the block), ``rss_start_mb`` the RSS when it began and
    ``peak_rss_increase_mb`` the difference: what the block itself needed on top of what was already resident."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    rss_start_mb: float = 0.0
    peak_rss_increase_mb: float = 0.0
    peak_reset: bool = False


@contextmanager
def measure() -> Iterator[Measurement]:
    """``with measure() as m: ...`` fills ``m`` when the block ends."""
    m = Measurement()
    m.peak_reset = reset_peak_rss()
    now = current_rss_mb()
    m.rss_start_mb = peak_rss_mb() if now is None else now
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        yield m
    finally:
        m.wall_seconds = time.perf_counter() - t0
        m.cpu_seconds = time.process_time() - cpu0
        m.peak_rss_mb = peak_rss_mb()
        m.peak_rss_increase_mb = max(0.0, m.peak_rss_mb - m.rss_start_mb)


@dataclass
class UpdateResult:
    """A trained update: the checkpoint in ``model_dir`` and what it cost.

    peak_rss_mb / peak_rss_increase_mb: the process's peak RSS during the update and its rise over the RSS at the
    start (see ``Measurement``). n_samples: training samples it saw per epoch.
    """

    method: str
    model_dir: Path
    wall_seconds: float
    peak_rss_mb: float
    peak_rss_increase_mb: float
    epochs: int
    n_samples: int
    history: list[dict] = field(default_factory=list)
    rss_start_mb: float = 0.0
    cpu_seconds: float = 0.0

    def recommender(self, run: LoadedRun) -> Recommender:
        """The updated model over ``run``'s catalog, ready for ``Recommender.recommend``."""
        model, _, layout, _ = load_model(self.model_dir, run.config.device, run.prepared.tokenizer.quantizer_hash())
        model.requires_grad_(False)
        return Recommender(model, layout, run.prepared.codes)

    def as_run(self, run: LoadedRun) -> LoadedRun:
        """``run`` with this model in place of the base one, for ``runs.evaluate.evaluate_model``."""
        recommender = self.recommender(run)
        return dataclasses.replace(run, recommender=recommender, base_hash=weights_hash(recommender.model))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model_dir": str(self.model_dir)}


def pseudo_cases(run: LoadedRun, requests: EditRequests) -> CaseSet:
    """The edit's knowledge as training samples: each request's history -> its cold item.

    A request copied from a training sample keeps that sample's user and time; others get user -1 and the latest
    training time. histories [m, L] must have the run's history length L.
    """
    split = run.prepared.split
    if len(requests) == 0:
        raise EmptyInputError("no edit requests to turn into training samples")
    if requests.histories.ndim != 2 or requests.histories.shape[1] != split.max_history:
        raise ConfigError(f"request histories have shape {requests.histories.shape}; the run expects "
                          f"[m, {split.max_history}]")
    bad = (requests.items < 0) | (requests.items >= split.n_items)
    bad_hist = (requests.histories >= split.n_items) | (requests.histories < PAD_ITEM)
    if bad.any() or bad_hist.any():
        value = requests.items[bad][0] if bad.any() else requests.histories[bad_hist][0]
        raise UnknownItemError(f"item index {int(value)} is not in the run's catalog of {split.n_items} items")
    src = requests.sources
    copied = src >= 0
    users = np.where(copied, split.train.users[np.where(copied, src, 0)], -1).astype(np.int64)
    latest = float(split.train.timestamps.max()) if len(split.train) else 0.0
    times = np.where(copied, split.train.timestamps[np.where(copied, src, 0)], latest).astype(np.float64)
    return CaseSet(users, requests.histories.astype(np.int64), requests.items.astype(np.int64), times)


def concat_cases(a: CaseSet, b: CaseSet) -> CaseSet:
    return CaseSet(np.concatenate([a.users, b.users]), np.concatenate([a.histories, b.histories]),
                   np.concatenate([a.targets, b.targets]), np.concatenate([a.timestamps, b.timestamps]))


def retrain(run: LoadedRun, requests: EditRequests, out_dir: Path, **budget) -> UpdateResult:
    """docs/method.md §5.9 Retrain: ``model/train.py``'s ``train_tiger`` from scratch with the run's model and train
    config (same stopping rule, seed, device; threads as configured for the process) on train + ``pseudo_cases``.

    budget: optional overrides of ``epochs``, ``max_minutes``, ``patience``, ``eval_cases`` (to bound the cost;
    anything else would change the recipe). Writes ``<out_dir>/model/`` and ``<out_dir>/update.json``.
    """
    unknown = set(budget) - set(BUDGET_KEYS)
    if unknown:
        raise ConfigError(f"retrain budget keys {sorted(unknown)} are not allowed; use {list(BUDGET_KEYS)}")
    split = run.prepared.split
    samples = concat_cases(split.train, pseudo_cases(run, requests))
    cfg = dataclasses.replace(run.config.train, device=run.config.device, seed=run.config.seed, **budget)
    out_dir = Path(out_dir)
    with measure() as m:
        trained = train_tiger(samples, split.valid, run.prepared.codes, layout_for(run.prepared.tokenizer),
                              run.config.model, cfg, out_dir / MODEL_DIR, run.prepared.tokenizer.quantizer_hash(),
                              resume=False)
    result = UpdateResult("retrain", out_dir / MODEL_DIR, m.wall_seconds, m.peak_rss_mb, m.peak_rss_increase_mb,
                          trained.epochs_run, len(samples), trained.history, m.rss_start_mb,
                          m.cpu_seconds)
    write_json(out_dir / RESULT_FILE, {**result.to_dict(), "best_epoch": trained.best_epoch,
                                       "best_valid_ndcg10": trained.best_valid_ndcg10})
    return result


def finetune(run: LoadedRun, requests: EditRequests, out_dir: Path, epochs: int = 3, lr: float | None = None,
             batch_size: int | None = None) -> UpdateResult:
    """Finetune: continue the base checkpoint on the pseudo interactions only (no validation, no early stopping).

    AdamW (the recipe's weight decay and gradient clipping), cosine decay from ``lr`` (default: a tenth of the
    recipe's peak lr, the usual fine-tuning step) over ``epochs``; batch size defaults to the recipe's. The run's
    own model is not touched: a fresh copy is loaded. Writes ``<out_dir>/model/`` and ``<out_dir>/update.json``.
    """
    if epochs < 1:
        raise ConfigError(f"finetune epochs must be ≥ 1, got {epochs}")
    samples = pseudo_cases(run, requests)
    recipe = run.config.train
    lr = recipe.lr / 10 if lr is None else lr
    batch_size = batch_size or recipe.batch_size
    if lr <= 0 or batch_size < 1:
        raise ConfigError(f"finetune needs lr > 0 and batch_size ≥ 1, got lr={lr}, batch_size={batch_size}")
    out_dir = Path(out_dir)
    codes = run.prepared.codes
    device = torch.device(run.config.device)
    history: list[dict] = []
    t0 = time.perf_counter()
    with measure() as m:
        model, model_cfg, layout, meta = load_model(run.run_dir / MODEL_DIR, run.config.device,
                                                    run.prepared.tokenizer.quantizer_hash())
        model.requires_grad_(True).train()
        optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
        steps_per_epoch = math.ceil(len(samples) / batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=steps_per_epoch * epochs)
        pos_mask = layout.position_mask().to(device)
        for epoch in range(epochs):
            loss = train_epoch(model, optim, sched, layout, samples, codes, batch_size, run.config.seed + epoch,
                               pos_mask, f"finetune {epoch + 1}/{epochs}")
            history.append({"epoch": epoch + 1, "train_loss": loss, "seconds": time.perf_counter() - t0})
        model.eval()
        save_model(model, model_cfg, layout, out_dir / MODEL_DIR, meta.tokenizer_hash,
                   extra={"finetuned_from": meta.weights_hash, "epochs": epochs, "lr": lr})
    result = UpdateResult("finetune", out_dir / MODEL_DIR, m.wall_seconds, m.peak_rss_mb, m.peak_rss_increase_mb,
                          epochs, len(samples), history, m.rss_start_mb, m.cpu_seconds)
    write_json(out_dir / RESULT_FILE, result.to_dict())
    return result
