"""The transformer and training loop SASRec, BERT4Rec and VQ-Rec share.

``SequenceEncoder`` turns item sequences into hidden states over any item table (ID embeddings, or VQ-Rec's
code-embedding sums); ``SequentialBaseline`` trains it with AdamW under an epoch and wall-clock budget, keeps the
weights of the best validation NDCG@10 (early stopping) and scores every catalog item by a dot product with the
item table. Subclasses say how a batch becomes a loss (``loss``) and a score (``score``).
"""
from __future__ import annotations

import math
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from genrecedit.atomic import write_bytes
from genrecedit.baselines.base import (WEIGHTS_FILE, Baseline, BaselineData, FitResult, can_reuse, read_fit,
                                       topk_from_scores, write_fit)
from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.errors import ArtifactMismatchError, ConfigError, EmptyInputError
from genrecedit.evaluation.metrics import ndcg_at, target_ranks
from genrecedit.runs.backbone import LoadedRun

MASK_ITEM = -2  # BERT4Rec's [mask] slot in a sequence (PAD_ITEM = -1 is padding)


@dataclass
class SequentialConfig:
    """Size and training budget of a transformer baseline. Defaults fit 2 CPU cores on ML-100k / game."""

    d_model: int = 64
    num_heads: int = 2
    num_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    epochs: int = 50
    max_minutes: float | None = 5.0  # wall-clock budget; stops after the epoch that crosses it
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping
    eval_cases: int = 1000  # validation cases sampled (seeded) for early stopping
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        if self.d_model <= 0 or self.num_heads <= 0 or self.d_model % self.num_heads:
            raise ConfigError(f"d_model={self.d_model} must be a positive multiple of num_heads={self.num_heads}")
        if self.num_layers < 1 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"num_layers, epochs, batch_size must be >= 1 and lr > 0: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class SequenceEncoder(nn.Module):
    """Item sequences -> hidden states, over an item table [n_items, d] given at each call (the network that owns
    the item table — ID embeddings or code sums — computes it once and also scores with it).

    Positions are counted from the right end, so the last slot (where every prediction is read) always has the
    same position embedding whatever the history length. A pad slot attends only to itself, so rows of pads never
    see an empty key set (no NaN); real slots never attend to pads.
    """

    def __init__(self, n_items: int, max_len: int, cfg: SequentialConfig, causal: bool) -> None:
        super().__init__()
        self.n_items = n_items
        self.causal = causal
        self.num_heads = cfg.num_heads
        self.special = nn.Embedding(2, cfg.d_model)  # row 0: pad, row 1: mask
        self.positions = nn.Embedding(max_len, cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.special.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """seq [B, T] item indices, PAD_ITEM / MASK_ITEM slots; table [n_items, d] -> hidden [B, T, d]."""
        batch, length = seq.shape
        if length > self.positions.num_embeddings:
            raise ConfigError(f"sequence of length {length} exceeds the model's {self.positions.num_embeddings}")
        full = torch.cat([table, self.special.weight])
        idx = torch.where(seq >= 0, seq, self.n_items - 1 - seq)  # -1 -> pad row, -2 -> mask row
        pos = torch.arange(length - 1, -1, -1, device=seq.device)
        x = self.dropout(full[idx] + self.positions(pos)[None])
        real = seq != PAD_ITEM
        eye = torch.eye(length, dtype=torch.bool, device=seq.device)
        allowed = real[:, None, :] | eye[None]  # [B, T(query), T(key)]
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()[None]
        mask = (~allowed).repeat_interleave(self.num_heads, dim=0)  # [B*H, T, T], True = blocked
        return self.norm(self.encoder(x, mask=mask))


class IdTable(nn.Module):
    """One learned vector per item: the item-ID models' item table. () -> [n_items, d]."""

    def __init__(self, n_items: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_items, d_model) * 0.02)

    def forward(self) -> torch.Tensor:
        return self.weight


class SequentialBaseline(Baseline):
    """A transformer over item sequences, trained on the run's training samples, scoring every catalog item."""

    config_class = SequentialConfig

    def __init__(self, cfg: SequentialConfig | None = None) -> None:
        super().__init__(cfg)
        self.net: nn.Module | None = None
        self.spec: dict = {}
        self.scorable: torch.Tensor | None = None  # [n_items] bool: items the model can rank at all

    # --- what a subclass defines -------------------------------------------------------------------------------
    def prepare(self, data: BaselineData) -> dict:
        """Everything ``build`` needs, as JSON (sizes), computed from the data; may stash arrays on self. The
        item-ID models need the catalog size and the history length."""
        return {"n_items": data.n_items, "max_history": data.max_history}

    @abstractmethod
    def build(self, spec: dict) -> nn.Module:
        """A fresh network for ``spec``."""

    @abstractmethod
    def loss(self, histories: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Training loss of a batch: histories [B, L], targets [B] (on the device)."""

    @abstractmethod
    def score(self, histories: torch.Tensor) -> torch.Tensor:
        """[B, L] histories -> [B, n_items] scores of every catalog item (before the ``scorable`` mask)."""

    def scorable_items(self, data: BaselineData) -> np.ndarray:
        """[n_items] bool: items this model can rank (item-ID models: only those seen in training)."""
        return data.seen_items()

    # --- shared --------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    def fit(self, run: LoadedRun, out_dir: Path | None = None) -> FitResult:
        return self.fit_data(BaselineData.from_run(run), out_dir)

    def fit_data(self, data: BaselineData, out_dir: Path | None = None) -> FitResult:
        """Train on ``data`` (or load an earlier fit from ``out_dir`` with the same config and data)."""
        if len(data.train) == 0:
            raise EmptyInputError("no training samples to fit a baseline on")
        fingerprint = data.fingerprint()
        meta = read_fit(out_dir) if out_dir is not None else None
        if can_reuse(meta, self.name, self.cfg, fingerprint) and (Path(out_dir) / WEIGHTS_FILE).exists():
            self.restore(meta, Path(out_dir), None)
            self.fit_result.reused = True
            return self.fit_result
        torch.manual_seed(self.cfg.seed)
        self.spec = self.prepare(data)
        self.net = self.build(self.spec).to(self.device)
        self.scorable = torch.from_numpy(self.scorable_items(data)).to(self.device)
        self.fit_result = self._train(data)
        if out_dir is not None:
            self.save(Path(out_dir), fingerprint)
        return self.fit_result

    def _train(self, data: BaselineData) -> FitResult:
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        eval_idx = np.sort(rng.choice(len(data.valid), size=min(cfg.eval_cases, len(data.valid)), replace=False))
        valid = data.valid.subset(eval_idx)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        decay = [p for n, p in self.net.named_parameters() if p.ndim >= 2 and "norm" not in n]
        no_decay = [p for n, p in self.net.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
        optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        steps = math.ceil(len(data.train) / cfg.batch_size)
        result = FitResult(best_valid_ndcg10=-1.0)
        best_state = None
        started = time.perf_counter()
        for epoch in range(cfg.epochs):
            self.net.train()
            order = rng.permutation(len(data.train))
            total = 0.0
            bar = tqdm(range(steps), desc=f"{self.name} {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
            for step in bar:
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                hist = torch.from_numpy(data.train.histories[idx]).to(self.device)
                tgt = torch.from_numpy(data.train.targets[idx]).to(self.device)
                loss = self.loss(hist, tgt, gen)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                optim.step()
                total += loss.item()
                bar.set_postfix(loss=f"{total / (step + 1):.3f}", refresh=False)
            ndcg = self.valid_ndcg(valid) if len(valid) else 0.0
            elapsed = time.perf_counter() - started
            result.history.append({"epoch": epoch + 1, "train_loss": total / steps, "valid_ndcg@10": ndcg,
                                   "seconds": elapsed})
            tqdm.write(f"{self.name} epoch {epoch + 1}: loss {total / steps:.4f}  valid NDCG@10 {ndcg:.4f}  "
                       f"({elapsed:.0f}s)")
            result.epochs_run = epoch + 1
            if ndcg > result.best_valid_ndcg10:
                result.best_valid_ndcg10, result.best_epoch = ndcg, epoch + 1
                best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            elif epoch + 1 - result.best_epoch >= cfg.patience:
                break
            if cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60:
                tqdm.write(f"{self.name}: {cfg.max_minutes} min budget reached")
                break
        result.seconds = time.perf_counter() - started
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        return result

    def valid_ndcg(self, cases: CaseSet) -> float:
        """Mean NDCG@10 of ``recommend`` on ``cases``."""
        top = self.recommend(cases, 10)
        return float(ndcg_at(target_ranks(top, cases.targets), 10).mean())

    @torch.no_grad()
    def recommend(self, cases: CaseSet, k: int) -> np.ndarray:
        """[n_cases, k] item indices by score; items outside ``scorable`` are never listed (PAD_ITEM pads)."""
        if self.net is None:
            raise ArtifactMismatchError(f"{self.name} is not fitted: call fit() or registry.load_baseline() first")
        was_training = self.net.training
        self.net.eval()
        parts = []
        for start in range(0, len(cases), self.cfg.eval_batch_size):
            hist = torch.from_numpy(cases.histories[start : start + self.cfg.eval_batch_size]).to(self.device)
            scores = self.score(self._fit_length(hist)).masked_fill(~self.scorable[None], float("-inf"))
            parts.append(topk_from_scores(scores, k))
        self.net.train(was_training)
        return np.concatenate(parts) if parts else np.zeros((0, k), np.int64)

    def _fit_length(self, hist: torch.Tensor) -> torch.Tensor:
        """Keep the last ``max_history`` items of longer histories, left-pad shorter ones: [B, L'] -> [B, L]."""
        length = int(self.spec["max_history"])
        if hist.shape[1] >= length:
            return hist[:, hist.shape[1] - length :]
        pad = torch.full((hist.shape[0], length - hist.shape[1]), PAD_ITEM, dtype=hist.dtype, device=hist.device)
        return torch.cat([pad, hist], dim=1)

    def save(self, out_dir: Path, fingerprint: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        tensors["scorable"] = self.scorable.cpu()
        write_bytes(out_dir / WEIGHTS_FILE, save(tensors))
        write_fit(out_dir, {**self.describe(), "spec": self.spec, "fingerprint": fingerprint})

    def restore(self, meta: dict, out_dir: Path, run: LoadedRun | None) -> None:
        self.spec = dict(meta["spec"])
        tensors = load_file(str(Path(out_dir) / WEIGHTS_FILE), device=str(self.device))
        self.net = self.build(self.spec).to(self.device)
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.net.eval()
        self.scorable = tensors["scorable"].bool()
        self.fit_result = FitResult(**meta.get("fit", {}))
