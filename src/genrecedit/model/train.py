"""Training the backbone: AdamW, warmup + cosine decay, early stopping on validation NDCG@10, resumable."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from genrecedit.data.dataset import CaseSet
from genrecedit.evaluation.metrics import ndcg_at, target_ranks
from genrecedit.model.recommender import DecodeConfig, Recommender
from genrecedit.errors import ArtifactMismatchError
from genrecedit.model.tiger import TigerConfig, build_tiger, load_model, save_model
from genrecedit.model.tokens import TokenLayout

STATE_FILE = "train_state.json"
LAST_WEIGHTS = "last.safetensors"
OPTIM_FILE = "optimizer.pt"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping
    eval_cases: int = 2000  # validation cases sampled (seeded) for early stopping
    eval_beam: int = 20
    eval_batch_size: int = 256
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that crosses it
    seed: int = 0
    device: str = "cpu"


@dataclass
class TrainResult:
    best_epoch: int
    best_valid_ndcg10: float
    epochs_run: int
    train_seconds: float
    history: list[dict]


def position_loss(model: torch.nn.Module, layout: TokenLayout, ids: torch.Tensor, mask: torch.Tensor,
                  dec_in: torch.Tensor, labels: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """Mean CE of each SID token over its own position's vocabulary. ids/mask [B, S]; dec_in/labels [B, P]."""
    logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits  # [B, P, V]
    logits = logits + pos_mask[None]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def validation_ndcg(recommender: Recommender, cases: CaseSet, cfg: TrainConfig) -> float:
    """Mean NDCG@10 of constrained beam search on ``cases``."""
    beams = recommender.recommend(cases.histories, DecodeConfig(beam=cfg.eval_beam, k=10,
                                                               batch_size=cfg.eval_batch_size))
    return float(ndcg_at(target_ranks(beams.items.numpy(), cases.targets), 10).mean())


def train_epoch(model: torch.nn.Module, optim: torch.optim.Optimizer, sched, layout: TokenLayout, samples: CaseSet,
                codes: np.ndarray, batch_size: int, seed: int, pos_mask: torch.Tensor, desc: str) -> float:
    """One pass over ``samples`` in a seeded order (AdamW step, grad-norm clip 1.0, scheduler step per batch);
    returns the mean loss. Shared by training and by Finetune (``baselines/update.py``)."""
    device = pos_mask.device
    order = np.random.default_rng(seed).permutation(len(samples))
    steps = math.ceil(len(samples) / batch_size)
    bar = tqdm(range(steps), desc=desc, unit="step", leave=False)
    total = 0.0
    for step in bar:
        idx = order[step * batch_size : (step + 1) * batch_size]
        ids, mask = layout.encoder_inputs(samples.histories[idx], codes)
        dec_in, labels = layout.decoder_inputs(codes[samples.targets[idx]])
        loss = position_loss(model, layout, ids.to(device), mask.to(device), dec_in.to(device), labels.to(device),
                             pos_mask)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        total += loss.item()
        bar.set_postfix(loss=f"{total / (step + 1):.3f}")
    return total / max(steps, 1)


def train_tiger(train: CaseSet, valid: CaseSet, codes: np.ndarray, layout: TokenLayout, model_cfg: TigerConfig,
                cfg: TrainConfig, out_dir: Path, tokenizer_hash: str, resume: bool = True,
                init_from: Path | None = None) -> TrainResult:
    """Train from scratch (or resume ``out_dir``) and keep the best checkpoint by validation NDCG@10 in out_dir.

    train: training samples (history -> target); valid: validation cases, of which ``cfg.eval_cases`` are
    sampled once (seeded) for early stopping; codes: [n_items, P] catalog SIDs. init_from: a model directory a
    new run starts from instead of the seeded initialisation (a fine-tune: fresh optimizer and schedule; its
    architecture and token layout must be this run's). A run resumed from ``out_dir`` ignores it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    model = build_tiger(model_cfg, layout, seed=cfg.seed).to(device)
    rng = np.random.default_rng(cfg.seed)
    eval_idx = rng.choice(len(valid), size=min(cfg.eval_cases, len(valid)), replace=False)
    eval_cases = valid.subset(np.sort(eval_idx))
    steps_per_epoch = max(1, int(np.ceil(len(train) / cfg.batch_size)))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "layer_norm" in name else decay).append(p)
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_cosine_schedule_with_warmup(optim, cfg.warmup_steps, steps_per_epoch * cfg.epochs)
    state = {"epoch": 0, "best_epoch": -1, "best": -1.0, "history": [], "seconds": 0.0,
             "config": {"model": asdict(model_cfg), "train": asdict(cfg)}}
    if resume and (out_dir / STATE_FILE).exists():
        state = json.loads((out_dir / STATE_FILE).read_text())
        if not _same_recipe(state["config"], {"model": asdict(model_cfg), "train": asdict(cfg)}):
            raise ValueError(f"{out_dir} holds a run with another config; use a new run directory")
        state["config"] = {"model": asdict(model_cfg), "train": asdict(cfg)}
        model.load_state_dict(load_file(str(out_dir / LAST_WEIGHTS)), strict=False)
        saved = torch.load(out_dir / OPTIM_FILE, weights_only=True)
        optim.load_state_dict(saved["optim"])
        sched.load_state_dict(saved["sched"])
    elif init_from is not None:
        parent, parent_cfg, parent_layout, meta = load_model(init_from)
        if asdict(parent_cfg) != asdict(model_cfg) or parent_layout != layout:
            raise ArtifactMismatchError(f"{init_from}: its architecture or token layout differs from this run's "
                                        "(a fine-tune keeps both)")
        model.load_state_dict(parent.state_dict())
        state["init_weights_hash"] = meta.weights_hash
    pos_mask = layout.position_mask().to(device)
    recommender = Recommender(model, layout, codes)
    bad_epochs = sum(1 for h in state["history"] if h["epoch"] > state["best_epoch"])
    started = time.perf_counter() - state["seconds"]
    for epoch in range(state["epoch"], cfg.epochs):
        if bad_epochs >= cfg.patience:
            break
        model.train()
        mean_loss = train_epoch(model, optim, sched, layout, train, codes, cfg.batch_size, cfg.seed + epoch,
                                pos_mask, f"epoch {epoch + 1}/{cfg.epochs}")
        model.eval()
        ndcg = validation_ndcg(recommender, eval_cases, cfg)
        elapsed = time.perf_counter() - started
        state["history"].append({"epoch": epoch + 1, "train_loss": mean_loss, "valid_ndcg@10": ndcg,
                                 "seconds": elapsed})
        tqdm.write(f"epoch {epoch + 1}: loss {mean_loss:.4f}  valid NDCG@10 {ndcg:.4f}  "
                   f"({elapsed:.0f}s)")
        if ndcg > state["best"]:
            state["best"], state["best_epoch"], bad_epochs = ndcg, epoch + 1, 0
            save_model(model, model_cfg, layout, out_dir, tokenizer_hash,
                       extra={"best_epoch": epoch + 1, "valid_ndcg@10": ndcg})
        else:
            bad_epochs += 1
        state["epoch"], state["seconds"] = epoch + 1, elapsed
        _save_train_state(model, optim, sched, state, out_dir)
        if cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60:
            tqdm.write(f"stopping: {cfg.max_minutes} min budget reached")
            break
    return TrainResult(state["best_epoch"], state["best"], state["epoch"], state["seconds"], state["history"])


# Budget knobs may change on resume (train longer); everything else must match the interrupted run.
_RESUMABLE_CHANGES = {"epochs", "max_minutes", "patience"}


def _same_recipe(saved: dict, current: dict) -> bool:
    strip = lambda c: {**c, "train": {k: v for k, v in c["train"].items() if k not in _RESUMABLE_CHANGES}}  # noqa: E731
    return strip(saved) == strip(current)


def _save_train_state(model, optim, sched, state: dict, out_dir: Path) -> None:
    """Everything needed to resume, each file written to a temp name and renamed."""
    tmp = out_dir / (LAST_WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("embed_tokens.weight")},
              str(tmp))
    os.replace(tmp, out_dir / LAST_WEIGHTS)
    tmp = out_dir / (OPTIM_FILE + ".tmp")
    torch.save({"optim": optim.state_dict(), "sched": sched.state_dict()}, tmp)
    os.replace(tmp, out_dir / OPTIM_FILE)
    tmp = out_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, out_dir / STATE_FILE)
