"""Hyper-parameters of the item tokenizer, as one validated dataclass that round-trips through JSON."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from genrecedit.errors import ConfigError

QuantizerKind = Literal["rqvae", "rqkmeans"]


@dataclass(frozen=True)
class TokenizerConfig:
    """How items' embeddings become semantic IDs of ``levels + 1`` tokens.

    kind: ``"rqkmeans"`` (residual k-means, cheap) or ``"rqvae"`` (TIGER's RQ-VAE).
    levels: number of residual codebooks (SID tokens before the dedup token).
    codebook_size: K, codes per level. A catalog smaller than K uses fewer codes; the token space keeps K.
    latent_dim, hidden_dims: RQ-VAE MLP ``input -> hidden_dims... -> latent_dim`` (mirrored by the decoder).
    epochs, lr, batch_size, commitment_weight: RQ-VAE training (Adam; loss = recon + codebook + beta * commitment).
    reset_dead_codes: RQ-VAE re-seeds codes unused for a whole epoch from random residuals (not after the last).
    normalize: L2-normalise embeddings before quantising (fit and assign alike).
    kmeans_max_iter: Lloyd iterations per k-means run (RQ-KMeans levels and the RQ-VAE codebook init).
    seed: every random choice (k-means init, MLP init, batch order, dead-code re-seeding) derives from it.
    dedup_capacity: vocabulary of the last (dedup) token, i.e. the most items one prefix may hold;
        ``None`` means ``codebook_size``.
    device: torch device for the RQ-VAE (results are bit-reproducible on CPU only).
    """

    kind: QuantizerKind = "rqkmeans"
    levels: int = 3
    codebook_size: int = 256
    latent_dim: int = 32
    hidden_dims: tuple[int, ...] = (256, 128)
    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 512
    commitment_weight: float = 0.25
    reset_dead_codes: bool = True
    normalize: bool = True
    kmeans_max_iter: int = 300
    seed: int = 0
    dedup_capacity: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.kind not in get_args(QuantizerKind):
            raise ConfigError(f"tokenizer kind must be one of {get_args(QuantizerKind)}, got {self.kind!r}")
        positive = {
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "latent_dim": self.latent_dim,
            "batch_size": self.batch_size,
            "kmeans_max_iter": self.kmeans_max_iter,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"tokenizer {name} must be >= 1, got {value}")
        if any(h < 1 for h in self.hidden_dims):
            raise ConfigError(f"tokenizer hidden_dims must all be >= 1, got {self.hidden_dims}")
        if self.epochs < 0:
            raise ConfigError(f"tokenizer epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"tokenizer lr must be > 0, got {self.lr}")
        if self.commitment_weight < 0:
            raise ConfigError(f"tokenizer commitment_weight must be >= 0, got {self.commitment_weight}")
        if self.dedup_capacity is not None and self.dedup_capacity < 1:
            raise ConfigError(f"tokenizer dedup_capacity must be >= 1 or None, got {self.dedup_capacity}")

    @property
    def dedup_size(self) -> int:
        """Vocabulary of the dedup token (``dedup_capacity`` resolved)."""
        return self.codebook_size if self.dedup_capacity is None else self.dedup_capacity

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Vocabulary of each SID position: ``levels`` times K, then the dedup vocabulary."""
        return (self.codebook_size,) * self.levels + (self.dedup_size,)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        out["hidden_dims"] = list(self.hidden_dims)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TokenizerConfig:
        """Inverse of ``to_dict``; unknown keys are a ``ConfigError`` (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown tokenizer config keys {unknown}; known: {sorted(known)}")
        return cls(**values)
