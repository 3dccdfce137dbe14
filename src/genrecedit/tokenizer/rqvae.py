"""TIGER's RQ-VAE: MLP encoder -> residual codebooks -> MLP decoder, and the quantiser that trains it.

Loss per batch (each term a per-item sum over features, averaged over the batch):
``||x_hat - x||^2 + sum_l ||e_l - sg(r_l)||^2 + beta * sum_l ||r_l - sg(e_l)||^2`` with ``r_0 = z``,
``r_{l+1} = r_l - sg(e_l)``, ``e_l`` the nearest code of level l; the decoder reads ``z + sg(sum_l e_l - z)``
(straight-through estimator). Codebooks are initialised by k-means on the latents of the whole catalog.

Dead codes: after every epoch but the last, a code that no item of that epoch chose is moved onto the level-l
residual of a randomly drawn item (the draw uses the seeded generator), so all K codes stay in play; this is what
keeps codebook usage high on catalogs of a few thousand items. Not after the last epoch: the final codes must come
from codebooks the model has been trained with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genrecedit.errors import ArtifactMismatchError
from genrecedit.tokenizer.config import TokenizerConfig
from genrecedit.tokenizer.quantizer import ResidualQuantizer, kmeans_centers, nearest_code


class RQVAEOutput(NamedTuple):
    """One forward pass over a batch of b items."""

    x_hat: torch.Tensor  # [b, input_dim] reconstruction
    codes: torch.Tensor  # [b, levels] int64
    recon_loss: torch.Tensor  # [] scalar
    codebook_loss: torch.Tensor  # [] scalar, trains the codebooks
    commitment_loss: torch.Tensor  # [] scalar, trains the encoder (weighted by beta outside)


@dataclass(frozen=True)
class EpochLog:
    """Mean losses of one training epoch and the codes that stayed unused in it (per level)."""

    epoch: int
    loss: float
    recon_loss: float
    codebook_loss: float
    commitment_loss: float
    dead_codes: tuple[int, ...]


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """``[b, input_dim] -> latent [b, latent_dim] -> levels x K codes -> [b, input_dim]``."""

    def __init__(
        self, input_dim: int, hidden_dims: tuple[int, ...], latent_dim: int, levels: int, codebook_size: int
    ) -> None:
        super().__init__()
        self.encoder = _mlp([input_dim, *hidden_dims, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), input_dim])
        self.codebooks = nn.Parameter(torch.zeros(levels, codebook_size, latent_dim))  # [levels, K, latent_dim]

    @property
    def levels(self) -> int:
        return int(self.codebooks.shape[0])

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z [b, latent] -> (sum of codes [b, latent], codes [b, levels], codebook loss [], commitment loss [])``."""
        residual = z
        total = torch.zeros_like(z)
        codes, codebook_loss, commitment_loss = [], z.new_zeros(()), z.new_zeros(())
        for level in range(self.levels):
            code = nearest_code(residual.detach(), self.codebooks[level].detach())
            e = self.codebooks[level][code]
            codebook_loss = codebook_loss + ((e - residual.detach()) ** 2).sum(-1).mean()
            commitment_loss = commitment_loss + ((residual - e.detach()) ** 2).sum(-1).mean()
            total = total + e
            residual = residual - e.detach()
            codes.append(code)
        return total, torch.stack(codes, dim=1), codebook_loss, commitment_loss

    def residuals(self, z: torch.Tensor, level: int) -> torch.Tensor:
        """``z [b, latent] -> [b, latent]``: what is left for ``level`` after the codes of the levels before it."""
        residual = z
        for lv in range(level):
            residual = residual - self.codebooks[lv][nearest_code(residual, self.codebooks[lv])]
        return residual

    def forward(self, x: torch.Tensor) -> RQVAEOutput:
        """``x [b, input_dim] -> RQVAEOutput``."""
        z = self.encoder(x)
        quantized, codes, codebook_loss, commitment_loss = self.quantize(z)
        x_hat = self.decoder(z + (quantized - z).detach())  # straight-through: decoder gradient reaches z
        recon_loss = ((x_hat - x) ** 2).sum(-1).mean()
        return RQVAEOutput(x_hat, codes, recon_loss, codebook_loss, commitment_loss)


class RQVAEQuantizer(ResidualQuantizer):
    """Trains an ``RQVAE`` with Adam on the catalog's embeddings, then encodes with the frozen model."""

    def __init__(self, config: TokenizerConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        self.model: RQVAE | None = None
        self.history: list[EpochLog] = []

    def _build(self, codebook_size: int) -> RQVAE:
        c = self.config
        return RQVAE(self.input_dim, c.hidden_dims, c.latent_dim, c.levels, codebook_size)

    def fit(self, x: np.ndarray) -> None:
        """Seeded MLP init, k-means codebook init on all latents, ``epochs`` of Adam over shuffled batches."""
        c = self.config
        n = x.shape[0]
        with torch.random.fork_rng(devices=[]):  # seed the MLP init without touching the caller's RNG
            torch.manual_seed(c.seed)
            model = self._build(min(c.codebook_size, n))
        generator = torch.Generator().manual_seed(c.seed)
        model.to(c.device)
        data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(c.device)
        self._init_codebooks(model, data, generator)
        optimizer = torch.optim.Adam(model.parameters(), lr=c.lr)
        self.history = []
        bar = tqdm(range(c.epochs), desc=f"rq-vae {c.levels}x{c.codebook_size}", unit="epoch")
        for epoch in bar:
            log = self._train_epoch(model, data, optimizer, generator, epoch)
            self.history.append(log)
            bar.set_postfix(loss=f"{log.loss:.4f}", dead=sum(log.dead_codes))
            if c.reset_dead_codes and epoch < c.epochs - 1:
                self._reset_dead_codes(model, data, log, generator)
        model.eval()
        self.model = model

    def _train_epoch(
        self, model: RQVAE, data: torch.Tensor, optimizer: torch.optim.Optimizer, generator: torch.Generator,
        epoch: int,
    ) -> EpochLog:
        c = self.config
        model.train()
        usage = torch.zeros(model.codebooks.shape[:2], dtype=torch.int64, device=data.device)  # [levels, K]
        sums = np.zeros(4)
        batches = 0
        for idx in torch.split(torch.randperm(data.shape[0], generator=generator), c.batch_size):
            out = model(data[idx.to(data.device)])
            loss = out.recon_loss + out.codebook_loss + c.commitment_weight * out.commitment_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for level in range(model.levels):
                usage[level] += torch.bincount(out.codes[:, level], minlength=usage.shape[1])
            sums += [loss.item(), out.recon_loss.item(), out.codebook_loss.item(), out.commitment_loss.item()]
            batches += 1
        loss_mean, recon_mean, codebook_mean, commitment_mean = (float(v) for v in sums / max(batches, 1))
        dead = tuple(int((usage[level] == 0).sum()) for level in range(model.levels))
        return EpochLog(epoch, loss_mean, recon_mean, codebook_mean, commitment_mean, dead_codes=dead)

    @torch.no_grad()
    def _init_codebooks(self, model: RQVAE, data: torch.Tensor, generator: torch.Generator) -> None:
        """Level-by-level k-means on the latents of every item; rows k-means cannot fill get random residuals."""
        c = self.config
        k = model.codebooks.shape[1]
        residual = model.encoder(data).cpu()
        for level in range(model.levels):
            centers = torch.from_numpy(
                kmeans_centers(residual.numpy(), k, c.seed + level, c.kmeans_max_iter)
            )
            if centers.shape[0] < k:
                fill = residual[torch.randint(residual.shape[0], (k - centers.shape[0],), generator=generator)]
                centers = torch.cat([centers, fill], dim=0)
            model.codebooks[level] = centers.to(model.codebooks.device)
            residual = residual - centers[nearest_code(residual, centers)]

    @torch.no_grad()
    def _reset_dead_codes(
        self, model: RQVAE, data: torch.Tensor, log: EpochLog, generator: torch.Generator
    ) -> None:
        """Move each code unused during the epoch onto the residual of a random item at its level."""
        z = None
        for level, n_dead in enumerate(log.dead_codes):
            if n_dead == 0:
                continue
            if z is None:
                model.eval()
                z = model.encoder(data)
            dead = torch.nonzero(~self._used(model, z, level)).squeeze(1)
            picks = torch.randperm(data.shape[0], generator=generator)[: dead.numel()].to(data.device)
            model.codebooks[level, dead] = model.residuals(z[picks], level)

    @staticmethod
    def _used(model: RQVAE, z: torch.Tensor, level: int) -> torch.Tensor:
        """``[K]`` bool: codes of ``level`` that some item of ``z [n, latent]`` maps to under the current model."""
        codes = nearest_code(model.residuals(z, level), model.codebooks[level])
        return torch.bincount(codes, minlength=model.codebooks.shape[1]) > 0

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> np.ndarray:
        """``[n, input_dim] -> [n, levels]`` int64 with the frozen model (eval mode, batches of ``batch_size``)."""
        model = self._require_model()
        data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        parts = [
            model.quantize(model.encoder(chunk.to(self.config.device)))[1].cpu()
            for chunk in torch.split(data, self.config.batch_size)
        ]
        if not parts:
            return np.zeros((0, self.config.levels), dtype=np.int64)
        return torch.cat(parts).numpy().astype(np.int64)

    def _require_model(self) -> RQVAE:
        if self.model is None:
            raise ArtifactMismatchError("the RQ-VAE quantiser is used before fit() or load")
        return self.model

    @property
    def codes_per_level(self) -> tuple[int, ...]:
        return (int(self._require_model().codebooks.shape[1]),) * self.config.levels

    def tensors(self) -> dict[str, torch.Tensor]:
        """The model's state dict (encoder.*, decoder.*, ``codebooks`` [levels, K, latent_dim]), on CPU."""
        return {k: v.detach().cpu().contiguous() for k, v in self._require_model().state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "codebooks" not in tensors:
            raise ArtifactMismatchError("RQ-VAE state lacks 'codebooks'")
        model = self._build(int(tensors["codebooks"].shape[1]))
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise ArtifactMismatchError(f"RQ-VAE state does not fit the tokenizer config: {exc}") from exc
        model.to(self.config.device).eval()
        self.model = model
