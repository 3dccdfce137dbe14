"""SemanticIdTokenizer: determinism, persistence, assignment of new items, dedup tokens, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genrecedit.errors import (
    ArtifactMismatchError,
    ConfigError,
    DuplicateItemError,
    EmptyInputError,
    GenRecEditError,
    UnknownItemError,
)
from genrecedit.tokenizer import SemanticIdTokenizer, TokenizerConfig

KINDS = ["rqkmeans", "rqvae"]
DIM = 16
DEDUP = 64  # a 5-epoch RQ-VAE on 200 points puts more than K items under some prefixes


def small_config(kind: str, **overrides: object) -> TokenizerConfig:
    values: dict[str, object] = dict(
        kind=kind, levels=3, codebook_size=8, latent_dim=8, hidden_dims=(32,), epochs=5, batch_size=64, seed=0,
        dedup_capacity=DEDUP,
    )
    values.update(overrides)
    return TokenizerConfig(**values)  # type: ignore[arg-type]


def clustered(n: int, seed: int = 0, clusters: int = 10) -> np.ndarray:
    """``[n, DIM]`` float32 points around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, DIM))
    return x.astype(np.float32)


def ids(n: int, prefix: str = "item") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def assert_dedup_valid(codes: np.ndarray) -> None:
    """Within each prefix group the dedup tokens are 0, 1, 2, ... in catalog order."""
    groups: dict[tuple[int, ...], int] = {}
    for row in codes.tolist():
        prefix = tuple(row[:-1])
        assert row[-1] == groups.get(prefix, 0)
        groups[prefix] = row[-1] + 1
    assert np.unique(codes, axis=0).shape[0] == codes.shape[0]


def tensors_of(tok: SemanticIdTokenizer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tok.quantizer.tensors().items()}


@pytest.mark.parametrize("kind", KINDS)
def test_fit_is_deterministic(kind: str) -> None:
    x = clustered(200)
    a = SemanticIdTokenizer(small_config(kind)).fit(x, ids(200))
    b = SemanticIdTokenizer(small_config(kind)).fit(x, ids(200))
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.content_hash() == b.content_hash()
    assert a.codes.shape == (200, 4) and a.codes.dtype == np.int64
    assert a.codebook_sizes == (8, 8, 8, DEDUP)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    x, new = clustered(200), clustered(30, seed=1)
    tok = SemanticIdTokenizer(small_config(kind)).fit(x, ids(200))
    tok.save(tmp_path / "tok")
    loaded = SemanticIdTokenizer.load(tmp_path / "tok")
    np.testing.assert_array_equal(loaded.codes, tok.codes)
    assert loaded.item_ids == tok.item_ids
    assert loaded.config == tok.config
    assert loaded.content_hash() == tok.content_hash()
    np.testing.assert_array_equal(loaded.assign(new, ids(30, "new")), tok.assign(new, ids(30, "new")))
    assert loaded.content_hash() == tok.content_hash()


@pytest.mark.parametrize("kind", KINDS)
def test_assign_uses_frozen_quantizer(kind: str) -> None:
    x, new = clustered(200), clustered(50, seed=2)
    tok = SemanticIdTokenizer(small_config(kind)).fit(x, ids(200))
    before_codes, before_tensors, before_qhash = tok.codes.copy(), tensors_of(tok), tok.quantizer_hash()

    assigned = tok.assign(new, ids(50, "new"))

    after = tok.quantizer.tensors()
    assert before_tensors.keys() == after.keys()
    for name, tensor in before_tensors.items():
        assert torch.equal(tensor, after[name]), name
    assert tok.quantizer_hash() == before_qhash
    np.testing.assert_array_equal(tok.codes[:200], before_codes)
    np.testing.assert_array_equal(tok.lookup(ids(50, "new")), assigned)
    normalised = new / np.linalg.norm(new, axis=1, keepdims=True)
    np.testing.assert_array_equal(assigned[:, :3], tok.quantizer.encode(normalised))
    assert len(tok) == 250 and tok.item_ids[200:] == ids(50, "new")
    assert_dedup_valid(tok.codes)
    assert tok.stats()["distinct_sids"] == 250


def test_dedup_tokens_count_in_catalog_order() -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((40, DIM)).astype(np.float32)
    x = np.concatenate([base, base[:3], base[:1]])  # item0 x3, item1 x2, item2 x2 share full prefixes
    tok = SemanticIdTokenizer(small_config("rqkmeans")).fit(x, ids(44))
    assert_dedup_valid(tok.codes)
    assert tok.lookup(["item0", "item40", "item43"])[:, -1].tolist() == [0, 1, 2]
    again = tok.assign(base[:1], ["late"])
    assert again[0, -1] == 3 and (again[0, :3] == tok.lookup(["item0"])[0, :3]).all()
    stats = tok.stats()
    assert stats["max_items_per_prefix"] >= 4 and stats["distinct_sids"] == 45
    assert stats["colliding_items"] >= 8


@pytest.mark.parametrize("kind", KINDS)
def test_duplicate_ids_rejected_and_catalog_unchanged(kind: str) -> None:
    x = clustered(100)
    with pytest.raises(DuplicateItemError, match="item3"):
        SemanticIdTokenizer(small_config(kind)).fit(x, ids(99) + ["item3"])
    tok = SemanticIdTokenizer(small_config(kind)).fit(x, ids(100))
    before = tok.content_hash()
    with pytest.raises(DuplicateItemError, match="already in"):
        tok.assign(x[:2], ["new0", "item5"])
    with pytest.raises(DuplicateItemError, match="twice"):
        tok.assign(x[:2], ["new0", "new0"])
    assert tok.content_hash() == before and len(tok) == 100


@pytest.mark.parametrize("kind", KINDS)
def test_dedup_capacity_exhausted(kind: str) -> None:
    x = clustered(150)
    probe = SemanticIdTokenizer(small_config(kind)).fit(x, ids(150))
    capacity = probe.stats()["max_items_per_prefix"]
    assert capacity >= 2
    with pytest.raises(GenRecEditError, match="dedup capacity"):
        SemanticIdTokenizer(small_config(kind, dedup_capacity=capacity - 1)).fit(x, ids(150))

    tok = SemanticIdTokenizer(small_config(kind, dedup_capacity=capacity)).fit(x, ids(150))
    assert tok.codebook_sizes[-1] == capacity
    before = tok.content_hash()
    with pytest.raises(GenRecEditError, match="dedup capacity"):
        tok.assign(np.repeat(x[:1], capacity, axis=0), ids(capacity, "copy"))
    assert tok.content_hash() == before


def test_input_errors() -> None:
    x = clustered(50)
    with pytest.raises(EmptyInputError):
        SemanticIdTokenizer(small_config("rqkmeans")).fit(x[:0], [])
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(GenRecEditError, match="item7"):
        SemanticIdTokenizer(small_config("rqkmeans")).fit(bad, ids(50))
    tok = SemanticIdTokenizer(small_config("rqkmeans")).fit(x, ids(50))
    with pytest.raises(ArtifactMismatchError, match="16-d"):
        tok.assign(np.ones((1, DIM + 1), dtype=np.float32), ["wide"])
    with pytest.raises(UnknownItemError, match="nope"):
        tok.lookup(["item1", "nope"])
    assert tok.assign(x[:0], []).shape == (0, 4)
    with pytest.raises(GenRecEditError, match="not fitted"):
        SemanticIdTokenizer().assign(x[:1], ["a"])


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_catalog_caps_codebooks(kind: str) -> None:
    x = clustered(5)
    tok = SemanticIdTokenizer(small_config(kind)).fit(x, ids(5))
    assert tok.codes[:, :3].max() < 5
    assert tok.codebook_sizes == (8, 8, 8, DEDUP)  # the token space keeps K
    assert tok.stats()["distinct_sids"] == 5


def test_save_refuses_foreign_directory_and_detects_corruption(tmp_path: Path) -> None:
    tok = SemanticIdTokenizer(small_config("rqkmeans")).fit(clustered(60), ids(60))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_text("x")
    with pytest.raises(ArtifactMismatchError, match="refusing"):
        tok.save(tmp_path / "run")
    tok.save(tmp_path / "tok")
    tok.assign(clustered(3, seed=9), ids(3, "n"))
    tok.save(tmp_path / "tok")  # overwriting a tokenizer is fine
    assert len(SemanticIdTokenizer.load(tmp_path / "tok")) == 63
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    meta = (tmp_path / "tok" / "tokenizer.json").read_text().replace('"item1"', '"itemX"')
    (tmp_path / "tok" / "tokenizer.json").write_text(meta)
    with pytest.raises(ArtifactMismatchError, match="hash"):
        SemanticIdTokenizer.load(tmp_path / "tok")
    with pytest.raises(ArtifactMismatchError, match="missing"):
        SemanticIdTokenizer.load(tmp_path / "run")


def test_config_validation_and_json_round_trip() -> None:
    cfg = small_config("rqvae", hidden_dims=[64, 32])
    assert cfg.hidden_dims == (64, 32)
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    assert TokenizerConfig(codebook_size=16).codebook_sizes == (16, 16, 16, 16)  # dedup defaults to K
    with pytest.raises(ConfigError, match="unknown"):
        TokenizerConfig.from_dict({"levls": 3})
    with pytest.raises(ConfigError, match="kind"):
        TokenizerConfig(kind="vq")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="codebook_size"):
        TokenizerConfig(codebook_size=0)
