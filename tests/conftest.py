"""Shared fixtures: tiny untrained models and catalogs (model/edit tests), a synthetic dataset in RecBole atomic
format and a tiny trained run on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genrecedit.model.tiger import TigerConfig, build_tiger
from genrecedit.model.tokens import TokenLayout

TINY_OVERRIDES = [
    "embedding.encoder=hashing", "tokenizer.codebook_size=8", "tokenizer.dedup_capacity=16",
    "model.d_model=16", "model.num_heads=2", "model.d_kv=8", "model.encoder_layers=1", "model.decoder_layers=2",
    "model.d_ff=32", "model.decoder_d_ff=64", "model.dropout=0.0", "train.epochs=2", "train.batch_size=64",
    "train.eval_cases=100", "train.warmup_steps=5", "edit.c0_samples=300", "edit.probe_samples=80",
    "edit.efficacy_samples=100", "edit.chunk_size=128", "decode.beam=10", "decode.k=10", "threads=1",
]


def write_synthetic_atomic(folder: Path, name: str = "synth", n_users: int = 120, n_items: int = 60,
                           per_user: int = 15, seed: int = 0, sequels: bool = False) -> Path:
    """Users who drift through item "genres" over time, so history predicts the next item a little. The new items
    (absent from training) are one release per genre played at the end of the time line, or with ``sequels`` one
    sequel per (genre, number) whose text is its originals' plus "sequel", played right after each of its
    originals in the time line's last 15 % (so the sequels' cases fall in validation and test alike)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genres = ["action", "comedy", "drama", "horror", "sport", "puzzle"]
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        start = rng.integers(0, len(genres))
        times = np.sort(rng.integers(0, 10_000, per_user))
        played = []
        for j, t in enumerate(times):
            g = (start + j // 5) % len(genres)
            item = g * (n_items // len(genres)) + int(rng.integers(0, n_items // len(genres)))
            lines.append(f"u{u}\ti{item}\t{t}")
            played.append((g, item, t))
        if sequels:  # right after each of the user's items of the time line's last 15 %
            for g, item, t in played:
                if t >= 8_500:
                    lines.append(f"u{u}\ti{n_items + 7 * g + item % 7}\t{t + 1}")
        else:  # new releases, one per genre, interacted with only at the end of the time line: cold items
            late = int(rng.integers(0, len(genres)))
            lines.append(f"u{u}\ti{n_items + late}\t{10_000 + int(rng.integers(0, 500))}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq"]
    for i in range(n_items + len(genres) * (7 if sequels else 1)):
        if i < n_items:
            g = genres[i // (n_items // len(genres))]
            items.append(f"i{i}\t{g} game number {i % 7} {g} edition")
        elif sequels:
            g = genres[(i - n_items) // 7]
            items.append(f"i{i}\t{g} game number {(i - n_items) % 7} {g} edition sequel")
        else:
            g = genres[i - n_items]
            items.append(f"i{i}\t{g} game number {i % 7} {g} edition")
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    return folder


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_synthetic_atomic(tmp_path_factory.mktemp("data") / "synth")


@pytest.fixture(scope="session")
def sequel_dir(tmp_path_factory) -> Path:
    """The synthetic data with sequels as its new items (``write_synthetic_atomic(sequels=True)``)."""
    return write_synthetic_atomic(tmp_path_factory.mktemp("data") / "sequels", sequels=True)


@pytest.fixture(scope="session")
def random_artifact(tiny_model):
    """random_artifact(items, codes, seed=0, scale=0.5, scheme="position_wise") -> a one-batch edit artifact for
    ``items`` with a random ΔW at every SID position (layers [1, 0, 1, 0]) on ``tiny_model``."""
    from genrecedit.edit.artifact import EditArtifact, EditBatch

    def make(items: np.ndarray, codes: np.ndarray, seed: int = 0, scale: float = 0.5,
             scheme: str = "position_wise") -> EditArtifact:
        g = torch.Generator().manual_seed(seed)
        d_model = tiny_model.config.d_model
        d_ff = tiny_model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
        dw = {p: torch.randn(d_model, d_ff, generator=g, dtype=torch.float64) * scale for p in range(codes.shape[1])}
        batch = EditBatch("b0", [f"i{i}" for i in items], codes[items], dw, {})
        return EditArtifact("base", [1, 0, 1, 0][: codes.shape[1]], [batch], scheme)

    return make


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """Config overrides for a tiny, fast backbone (the tiny_run settings)."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synthetic_dir):
    """A trained tiny run directory (time split of the synthetic data)."""
    from genrecedit.config import load_config
    from genrecedit.runs.backbone import train_backbone

    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [f"dataset={synthetic_dir}", f"cache_dir={root / 'cache'}", *TINY_OVERRIDES])
    train_backbone(cfg, root / "run")
    return root / "run"


@pytest.fixture(scope="session")
def tiny_layout() -> TokenLayout:
    return TokenLayout((5, 4, 3, 3))


@pytest.fixture(scope="session")
def tiny_model(tiny_layout):
    cfg = TigerConfig(d_model=16, num_heads=2, d_kv=8, encoder_layers=1, decoder_layers=3, d_ff=32,
                      decoder_d_ff=48, dropout=0.0)
    model = build_tiger(cfg, tiny_layout, seed=3).eval()
    # Untrained T5 init gives near-uniform logits; scale the head so rankings are decisive and ties impossible.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture(scope="session")
def tiny_codes(tiny_layout) -> np.ndarray:
    rng = np.random.default_rng(0)
    sizes = tiny_layout.sizes
    all_sids = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    return all_sids[rng.choice(len(all_sids), size=40, replace=False)]


@pytest.fixture(scope="session")
def tiny_histories() -> np.ndarray:
    rng = np.random.default_rng(1)
    hist = rng.integers(0, 40, size=(6, 5))
    hist[0, :] = -1  # an empty history
    hist[1, :3] = -1  # a short one
    return hist
