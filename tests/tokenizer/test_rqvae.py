"""RQ-VAE quantiser: training reduces the loss, codebooks start from k-means, dead codes get re-seeded."""
from __future__ import annotations

import numpy as np
import torch

from genrecedit.tokenizer import RQVAE, TokenizerConfig
from genrecedit.tokenizer.quantizer import kmeans_centers, nearest_code
from genrecedit.tokenizer.rqvae import EpochLog, RQVAEQuantizer

DIM = 16


def data(n: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, DIM))
    return (centres[rng.integers(12, size=n)] + 0.2 * rng.standard_normal((n, DIM))).astype(np.float32)


def config(**overrides: object) -> TokenizerConfig:
    values: dict[str, object] = dict(
        kind="rqvae", levels=3, codebook_size=8, latent_dim=8, hidden_dims=(32,), epochs=30, batch_size=64, lr=3e-3
    )
    values.update(overrides)
    return TokenizerConfig(**values)  # type: ignore[arg-type]


def test_forward_shapes() -> None:
    model = RQVAE(input_dim=DIM, hidden_dims=(32, 16), latent_dim=8, levels=3, codebook_size=8)
    out = model(torch.from_numpy(data(10)))
    assert out.x_hat.shape == (10, DIM)
    assert out.codes.shape == (10, 3) and out.codes.dtype == torch.int64
    assert out.recon_loss.ndim == 0 and out.commitment_loss.ndim == 0


def test_training_reduces_loss() -> None:
    q = RQVAEQuantizer(config(), input_dim=DIM)
    q.fit(data())
    assert len(q.history) == 30
    assert q.history[-1].loss < 0.8 * q.history[0].loss
    assert q.history[-1].recon_loss < q.history[0].recon_loss
    codes = q.encode(data())
    assert codes.shape == (256, 3) and codes.min() >= 0 and codes.max() < 8


def test_codebooks_start_from_kmeans_of_latents() -> None:
    cfg = config(epochs=0)
    x = data()
    q = RQVAEQuantizer(cfg, input_dim=DIM)
    q.fit(x)
    assert q.model is not None
    with torch.no_grad():
        residual = q.model.encoder(torch.from_numpy(x))
    for level in range(cfg.levels):
        expected = torch.from_numpy(kmeans_centers(residual.numpy(), 8, cfg.seed + level, cfg.kmeans_max_iter))
        torch.testing.assert_close(q.model.codebooks[level].detach(), expected)
        residual = residual - expected[nearest_code(residual, expected)]


def test_dead_codes_are_reseeded_from_residuals() -> None:
    cfg = config(epochs=1)
    x = data()
    q = RQVAEQuantizer(cfg, input_dim=DIM)
    q.fit(x)
    model = q.model
    assert model is not None
    with torch.no_grad():
        model.codebooks[1, 5] = 1e4  # far from every residual: no item can choose it
    inputs = torch.from_numpy(x)
    with torch.no_grad():
        z = model.encoder(inputs)
    assert not RQVAEQuantizer._used(model, z, 1)[5]
    log = EpochLog(0, 0.0, 0.0, 0.0, 0.0, dead_codes=(0, 1, 0))
    q._reset_dead_codes(model, inputs, log, torch.Generator().manual_seed(0))
    assert model.codebooks[1, 5].abs().max() < 1e3
    assert RQVAEQuantizer._used(model, z, 1)[5]


def test_fit_leaves_global_rng_alone_and_is_deterministic() -> None:
    state = torch.random.get_rng_state()
    a, b = RQVAEQuantizer(config(epochs=3), DIM), RQVAEQuantizer(config(epochs=3), DIM)
    a.fit(data())
    b.fit(data())
    assert torch.equal(state, torch.random.get_rng_state())
    for name, tensor in a.tensors().items():
        assert torch.equal(tensor, b.tensors()[name]), name
