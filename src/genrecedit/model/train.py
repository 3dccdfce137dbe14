"""Training the backbone: AdamW, warmup + cosine decay, early stopping on validation NDCG@10, resumable.

One code path for one process and for ``torchrun`` (``model/distributed.py``): with several processes the model is
wrapped in ``DistributedDataParallel``, every global batch of ``train.batch_size`` samples is split evenly over the
processes by a ``DistributedSampler`` whose order is the single-process order, validation cases are shared out and
their NDCG summed, and only rank 0 writes files, bars and logs. On CUDA the forward pass runs under bf16 autocast."""
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
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from genrecedit.data.dataset import CaseSet
from genrecedit.evaluation.metrics import ndcg_at, target_ranks
from genrecedit.model.recommender import DecodeConfig, Recommender
from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.model.distributed import DistContext, all_reduce_max, all_reduce_sum, barrier, current
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


def validation_ndcg(recommender: Recommender, cases: CaseSet, cfg: TrainConfig,
                    ctx: DistContext | None = None) -> float:
    """Mean NDCG@10 of constrained beam search on ``cases``; with several processes each scores every world-th case
    and the sums are reduced, so every process gets the same mean."""
    ctx = ctx or DistContext()
    mine = cases.subset(np.arange(ctx.rank, len(cases), ctx.world)) if ctx.distributed else cases
    beams = recommender.recommend(mine.histories, DecodeConfig(beam=cfg.eval_beam, k=10,
                                                               batch_size=cfg.eval_batch_size))
    ndcg = ndcg_at(target_ranks(beams.items.numpy(), mine.targets), 10)
    total = all_reduce_sum(ctx, torch.tensor([float(ndcg.sum()), float(len(ndcg))], dtype=torch.float64))
    return float(total[0] / max(total[1], 1.0))


class EpochShards(DistributedSampler):
    """A ``DistributedSampler`` over sample indices whose order is numpy's permutation under ``seed + epoch`` (the
    order single-process training always used), padded by repeating its first indices to a multiple of the world
    size; rank r takes every world-th index from r. Cut into consecutive local batches of b, step s of all ranks
    together covers positions s·b·world … (s+1)·b·world of that order: the global batch one process would take."""

    def __init__(self, n: int, world: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)

    def __iter__(self):
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.dataset))
        if self.total_size > len(order):
            order = np.concatenate([order, np.resize(order, self.total_size - len(order))])
        return iter(order[self.rank:self.total_size:self.num_replicas].tolist())


def train_epoch(model: torch.nn.Module, optim: torch.optim.Optimizer, sched, layout: TokenLayout, samples: CaseSet,
                codes: np.ndarray, batch_size: int, seed: int, pos_mask: torch.Tensor, desc: str,
                ctx: DistContext | None = None, sampler: EpochShards | None = None) -> float:
    """One pass over ``samples`` in a seeded order (AdamW step, grad-norm clip 1.0, scheduler step per batch);
    returns the mean loss. Shared by training and by Finetune (``baselines/update.py``).

    ``batch_size`` is the global batch: with a multi-process ``ctx`` each process takes batch_size / world of it from
    ``sampler`` (its shard, already ``set_epoch``-ed; default: the order of ``seed``) and ``model`` is the
    ``DistributedDataParallel`` wrapper, which averages the gradients; the returned loss is then the mean over all
    processes. bf16 autocast on CUDA."""
    ctx = ctx or DistContext()
    device = pos_mask.device
    sampler = sampler or EpochShards(len(samples), ctx.world, ctx.rank, seed)
    order = np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
    local = batch_size // ctx.world
    steps = math.ceil(len(order) / local)
    bar = tqdm(range(steps), desc=desc, unit="step", leave=False, disable=not ctx.is_main)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for step in bar:
        idx = order[step * local : (step + 1) * local]
        ids, mask = layout.encoder_inputs(samples.histories[idx], codes)
        dec_in, labels = layout.decoder_inputs(codes[samples.targets[idx]])
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = position_loss(model, layout, ids.to(device), mask.to(device), dec_in.to(device),
                                 labels.to(device), pos_mask)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        total += loss.detach()
        if ctx.is_main and (step % 20 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{float(total) / (step + 1):.3f}")
    mean = all_reduce_sum(ctx, (total / max(steps, 1)).reshape(1))
    return float(mean[0]) / ctx.world


def train_tiger(train: CaseSet, valid: CaseSet, codes: np.ndarray, layout: TokenLayout, model_cfg: TigerConfig,
                cfg: TrainConfig, out_dir: Path, tokenizer_hash: str, resume: bool = True,
                init_from: Path | None = None, ctx: DistContext | None = None) -> TrainResult:
    """Train from scratch (or resume ``out_dir``) and keep the best checkpoint by validation NDCG@10 in out_dir.

    train: training samples (history -> target); valid: validation cases, of which ``cfg.eval_cases`` are
    sampled once (seeded) for early stopping; codes: [n_items, P] catalog SIDs. init_from: a model directory a
    new run starts from instead of the seeded initialisation (a fine-tune: fresh optimizer and schedule; its
    architecture and token layout must be this run's). A run resumed from ``out_dir`` ignores it. ctx: this
    process's place in a ``torchrun`` job (default: the process group joined, if any, else one process; its device
    replaces ``cfg.device``): every process runs this with the same arguments, rank 0 writes.
    """
    ctx = ctx or current(cfg.device)
    if cfg.batch_size % ctx.world:
        raise ConfigError(f"train.batch_size {cfg.batch_size} (the global batch) must be a multiple of the "
                          f"{ctx.world} processes")
    out_dir = Path(out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(ctx.device)
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
        model.load_state_dict(load_file(str(out_dir / LAST_WEIGHTS), device=str(device)), strict=False)
        saved = torch.load(out_dir / OPTIM_FILE, weights_only=True, map_location=device)
        optim.load_state_dict(saved["optim"])
        sched.load_state_dict(saved["sched"])
    elif init_from is not None:
        parent, parent_cfg, parent_layout, meta = load_model(init_from)
        if asdict(parent_cfg) != asdict(model_cfg) or parent_layout != layout:
            raise ArtifactMismatchError(f"{init_from}: its architecture or token layout differs from this run's "
                                        "(a fine-tune keeps both)")
        model.load_state_dict(parent.state_dict())
        state["init_weights_hash"] = meta.weights_hash
    # every process starts from the same weights and state (DDP also broadcasts rank 0's parameters)
    net = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if ctx.distributed else model)
    sampler = EpochShards(len(train), ctx.world, ctx.rank, cfg.seed)
    pos_mask = layout.position_mask().to(device)
    recommender = Recommender(model, layout, codes)
    bad_epochs = sum(1 for h in state["history"] if h["epoch"] > state["best_epoch"])
    started = time.perf_counter() - state["seconds"]
    for epoch in range(state["epoch"], cfg.epochs):
        if bad_epochs >= cfg.patience:
            break
        net.train()
        sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        mean_loss = train_epoch(net, optim, sched, layout, train, codes, cfg.batch_size, cfg.seed + epoch,
                                pos_mask, f"epoch {epoch + 1}/{cfg.epochs}", ctx, sampler)
        train_seconds = all_reduce_max(ctx, time.perf_counter() - epoch_start)  # the epoch without validation
        net.eval()
        ndcg = validation_ndcg(recommender, eval_cases, cfg, ctx)
        # the slowest process's clock, so that every process stops after the same epoch
        elapsed = all_reduce_max(ctx, time.perf_counter() - started)
        state["history"].append({"epoch": epoch + 1, "train_loss": mean_loss, "valid_ndcg@10": ndcg,
                                 "seconds": elapsed, "train_seconds": train_seconds})
        if ctx.is_main:
            tqdm.write(f"epoch {epoch + 1}: loss {mean_loss:.4f}  valid NDCG@10 {ndcg:.4f}  "
                       f"({elapsed:.0f}s)")
        if ndcg > state["best"]:
            state["best"], state["best_epoch"], bad_epochs = ndcg, epoch + 1, 0
            if ctx.is_main:
                save_model(model, model_cfg, layout, out_dir, tokenizer_hash,
                           extra={"best_epoch": epoch + 1, "valid_ndcg@10": ndcg})
        else:
            bad_epochs += 1
        state["epoch"], state["seconds"] = epoch + 1, elapsed
        if ctx.is_main:
            _save_train_state(model, optim, sched, state, out_dir)
        if cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60:
            if ctx.is_main:
                tqdm.write(f"stopping: {cfg.max_minutes} min budget reached")
            break
    barrier(ctx)  # rank 0's files are complete when any process returns
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
