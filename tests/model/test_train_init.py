"""``train_tiger(init_from=...)``: a fine-tune starts from the parent's weights (not the seeded initialisation),
refuses a parent of another architecture, and a resumed run ignores it."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from genrecedit.data.dataset import CaseSet
from genrecedit.errors import ArtifactMismatchError
from genrecedit.model.tiger import TigerConfig, build_tiger, save_model, weights_hash
from genrecedit.model.train import TrainConfig, train_tiger

CFG = TigerConfig(d_model=16, num_heads=2, d_kv=8, encoder_layers=1, decoder_layers=2, d_ff=32, decoder_d_ff=48,
                  dropout=0.0)


def _cases(n: int, n_items: int, seed: int) -> CaseSet:
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, n_items, size=(n, 4))
    hist[: n // 4, :2] = -1
    return CaseSet(np.arange(n, dtype=np.int64), hist, rng.integers(0, n_items, n), np.arange(n, dtype=np.float64))


@pytest.fixture()
def parent_dir(tmp_path, tiny_layout, tiny_codes):
    model = build_tiger(CFG, tiny_layout, seed=11)  # another seed than the fine-tune's own initialisation
    save_model(model, CFG, tiny_layout, tmp_path / "parent", "tok")
    return tmp_path / "parent", weights_hash(model)


def test_fine_tune_starts_from_the_parent(tmp_path, tiny_layout, tiny_codes, parent_dir):
    parent, parent_hash = parent_dir
    # lr 0: one epoch changes no weight, so the best checkpoint is exactly the weights training started from
    tcfg = TrainConfig(epochs=1, batch_size=16, lr=0.0, warmup_steps=0, eval_cases=8, patience=1, seed=0)
    train, valid = _cases(40, len(tiny_codes), 0), _cases(10, len(tiny_codes), 1)
    train_tiger(train, valid, tiny_codes, tiny_layout, CFG, tcfg, tmp_path / "ft", "tok", init_from=parent)
    assert json.loads((tmp_path / "ft" / "model.json").read_text())["weights_hash"] == parent_hash
    train_tiger(train, valid, tiny_codes, tiny_layout, CFG, tcfg, tmp_path / "scratch", "tok")
    scratch = json.loads((tmp_path / "scratch" / "model.json").read_text())["weights_hash"]
    assert scratch == weights_hash(build_tiger(CFG, tiny_layout, seed=0)) != parent_hash


def test_parent_of_another_architecture_is_refused(tmp_path, tiny_layout, tiny_codes, parent_dir):
    parent, _ = parent_dir
    tcfg = TrainConfig(epochs=1, batch_size=16, eval_cases=8, seed=0)
    with pytest.raises(ArtifactMismatchError, match="architecture"):
        train_tiger(_cases(20, len(tiny_codes), 0), _cases(5, len(tiny_codes), 1), tiny_codes, tiny_layout,
                    replace(CFG, d_ff=24), tcfg, tmp_path / "ft", "tok", init_from=parent)
    assert not (tmp_path / "ft" / "model.json").exists()
