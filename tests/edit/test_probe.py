"""Layer location (docs/method.md §5.3): the probe finds the layer whose keys separate edit requests from training keys,
scores every layer of a position on the same grouped folds, and leaves the official l_p = p only for a layer it
resolves as better (a noise-level lead must not move the edit: it flipped with the BLAS thread count on game)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecedit.edit.probe import ProbeTable, fixed_layers, locate_layers, probe_accuracy, probe_folds

N_LAYERS, D = 4, 24


def _keys(rng, n, shift):
    x = rng.standard_normal((n, D))
    x[:, :4] += shift
    return torch.from_numpy(x).float()


def _table(signal: dict[tuple[int, int], float], n_pos=2, seed=0, n=300) -> ProbeTable:
    """Probe table over synthetic keys: requests at (position, layer) shifted by ``signal`` (0 elsewhere)."""
    rng = np.random.default_rng(seed)
    pos_groups = rng.integers(0, 40, n)  # 40 edited items
    neg_groups = rng.integers(0, 200, n)
    folds = np.full((n_pos, N_LAYERS, 5), np.nan)
    for p in range(n_pos):
        for layer in range(N_LAYERS):
            pos = _keys(rng, n, signal.get((p, layer), 0.0))
            neg = _keys(rng, n, 0.0)
            acc = probe_accuracy(pos, neg, pos_groups, neg_groups, seed=seed)
            folds[p, layer, :len(acc)] = acc
    return ProbeTable.from_folds(folds)


def test_the_probe_finds_the_layer_that_separates_requests():
    table = _table({(0, 2): 1.5, (1, 3): 1.5, (1, 0): 0.3})
    assert locate_layers("probe", 2, N_LAYERS, table, seed=0, alpha=0.05) == [2, 3]
    assert table.accuracy[0, 2] > 0.85 and table.accuracy[1, 3] > 0.85
    assert np.all(table.accuracy[0, [0, 1, 3]] < 0.65)  # noise layers near chance
    assert locate_layers("worst", 2, N_LAYERS, table, seed=0) == table.worst_layers()
    assert table.worst_layers()[1] != 3


def test_an_unresolved_probe_keeps_the_official_layer():
    """No layer carries a signal, so every lead is noise: over 10 seeds × 2 positions the test at 5 % rarely
    leaves l_p = p, while the paper's plain argmax leaves it about 3 times in 4."""
    moved = {None: 0, 0.05: 0}
    for seed in range(10):
        table = _table({}, seed=seed)
        assert table.best_layers() == [int(np.argmax(r)) for r in table.accuracy]
        for alpha in moved:
            layers = locate_layers("probe", 2, N_LAYERS, table, seed=0, alpha=alpha)
            moved[alpha] += sum(a != b for a, b in zip(layers, fixed_layers(2, N_LAYERS)))
    assert moved[0.05] <= 2 and moved[None] >= 10, moved


def test_a_lead_must_hold_across_the_folds():
    """Same mean lead (0.02) of layer 1 over the default layer 0: it moves the edit when it holds in every fold,
    not when the folds disagree."""
    consistent = np.array([[[0.70, 0.71, 0.69, 0.70, 0.70], [0.72, 0.73, 0.71, 0.72, 0.72]]])
    noisy = np.array([[[0.70, 0.71, 0.69, 0.70, 0.70], [0.78, 0.65, 0.80, 0.64, 0.73]]])
    pad = np.full((1, 2, 5), 0.5)  # layers 2, 3: chance
    assert ProbeTable.from_folds(np.concatenate([consistent, pad], 1)).best_layers([0], 0.05) == [1]
    noisy_table = ProbeTable.from_folds(np.concatenate([noisy, pad], 1))
    assert noisy_table.best_layers([0], 0.05) == [0]
    assert noisy_table.best_layers([0], None) == [1]


def test_every_layer_of_a_position_is_scored_on_the_same_folds():
    rng = np.random.default_rng(3)
    pos, neg = _keys(rng, 200, 0.8), _keys(rng, 200, 0.0)
    groups_p, groups_n = rng.integers(0, 30, 200), rng.integers(0, 100, 200)
    a = probe_accuracy(pos, neg, groups_p, groups_n, seed=7)
    b = probe_accuracy(pos.clone(), neg.clone(), groups_p, groups_n, seed=7)
    assert len(a) == 5 and np.array_equal(a, b)
    assert not np.array_equal(a, probe_accuracy(pos, neg, groups_p, groups_n, seed=8))


def test_too_few_items_give_fewer_folds_and_an_uninformative_score():
    rng = np.random.default_rng(0)
    pos, neg = _keys(rng, 60, 2.0), _keys(rng, 60, 0.0)
    three = probe_accuracy(pos, neg, np.arange(60) % 3, np.arange(60) % 50, seed=0)
    assert len(three) == 3  # 3 edited items: 3 folds
    one = probe_accuracy(pos, neg, np.zeros(60, np.int64), np.arange(60) % 50, seed=0)
    assert np.all(one == 0.5)


def _stacked(rng, signal: list[float], n: int = 300):
    """Request and training keys [L, n, D] of one position, the requests shifted by ``signal[l]`` at layer l."""
    pos = torch.stack([_keys(rng, n, shift) for shift in signal])
    neg = torch.stack([_keys(rng, n, 0.0) for _ in signal])
    return pos, neg


def test_torch_and_sklearn_probes_agree():
    """The torch probe (every layer of a position and every fold fitted at once) and the scikit-learn reference on
    the same random keys: mean accuracies within 0.02 at every (position, layer), the same folds (the same NaN-free
    fold count) and the same chosen layers; with one clearly separating layer per position both pick it."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        pos_groups, neg_groups = rng.integers(0, 40, 300), rng.integers(0, 200, 300)
        signals = [[0.0, 0.3, 1.5, 0.0], [0.2, 0.0, 0.0, 1.5]]  # position 0: layer 2; position 1: layer 3
        tables = {}
        for backend in ("torch", "sklearn"):
            folds = []
            for p, signal in enumerate(signals):
                pos, neg = _stacked(np.random.default_rng([seed, p]), signal)
                folds.append(probe_folds(pos, neg, pos_groups, neg_groups, seed=seed, backend=backend))
            tables[backend] = ProbeTable.from_folds(np.stack(folds))
        torch_t, sk_t = tables["torch"], tables["sklearn"]
        assert torch_t.folds.shape == sk_t.folds.shape == (2, N_LAYERS, 5)
        assert np.abs(torch_t.accuracy - sk_t.accuracy).max() <= 0.02, (torch_t.accuracy, sk_t.accuracy)
        assert torch_t.best_layers() == sk_t.best_layers() == [2, 3]
        default = fixed_layers(2, N_LAYERS)
        assert torch_t.best_layers(default, 0.05) == sk_t.best_layers(default, 0.05) == [2, 3]


def test_the_probe_backend_is_torch_by_default_and_only_torch_or_sklearn():
    from genrecedit.config import load_config
    from genrecedit.errors import ConfigError

    assert load_config(None).edit.probe_backend == "torch"
    assert load_config(None, ["edit.probe_backend=sklearn"]).edit.probe_backend == "sklearn"
    with pytest.raises(ConfigError, match="probe_backend"):
        load_config(None, ["edit.probe_backend=liblinear"])
    rng = np.random.default_rng(0)
    pos, neg = _stacked(rng, [0.0, 2.0])
    groups = rng.integers(0, 30, 300)
    on_cpu = probe_folds(pos, neg, groups, groups, seed=0, device="cpu")
    assert on_cpu.shape == (2, 5) and on_cpu[1].mean() > 0.9 > 0.65 > on_cpu[0].mean()
    with pytest.raises(ValueError, match="backend"):
        probe_folds(pos, neg, groups, groups, seed=0, backend="liblinear")


@pytest.mark.parametrize("override", ["edit.probe_folds=1", "edit.probe_alpha=1.5"])
def test_bad_probe_settings_are_refused(tiny_run, override):
    from genrecedit.errors import ConfigError
    from genrecedit.runs.backbone import load_run
    from genrecedit.runs.edit import build_requests, make_editor

    run = load_run(tiny_run, [override])
    with pytest.raises(ConfigError, match="probe"):
        make_editor(run).edit(build_requests(run), run.prepared.codes, run.prepared.split.item_ids)


def test_gate_false_positive_rate_holds_on_held_out_keys():
    from genrecedit.edit.gate import fit_gate

    gen = torch.Generator().manual_seed(0)
    positives = torch.randn(500, 16, generator=gen) + 1.0
    negatives = torch.randn(2000, 16, generator=gen)
    gate = fit_gate(positives, negatives, 0.05, seed=0)
    fresh = torch.randn(20000, 16, generator=gen)  # never seen by the fit nor by its threshold
    assert float(gate(fresh).float().mean()) <= 0.05 + 0.03
    assert float(gate(torch.randn(2000, 16, generator=gen) + 1.0).float().mean()) > 0.5  # and it still fires


def test_grouped_folds_are_scikit_learns_and_computed_once_per_labels_and_groups():
    from sklearn.model_selection import StratifiedGroupKFold

    from genrecedit.edit.probe import grouped_folds

    rng = np.random.default_rng(3)
    y = np.repeat([1.0, 0.0], 60)
    groups = np.concatenate([rng.integers(0, 15, 60), rng.integers(100, 130, 60)])
    folds = grouped_folds(y, groups, 4, seed=5)
    expected = list(StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=5).split(y, y, groups))
    assert len(folds) == 4
    for (tr, te), (tr_ref, te_ref) in zip(folds, expected):
        np.testing.assert_array_equal(tr, tr_ref)
        np.testing.assert_array_equal(te, te_ref)
    assert grouped_folds(y.copy(), groups.copy(), 4, seed=5) is folds  # the next position reuses them
    assert grouped_folds(y, groups, 4, seed=6) is not folds  # another seed: other folds
    other = groups.copy()
    other[0] = 14 if other[0] != 14 else 13
    assert grouped_folds(y, other, 4, seed=5) is not folds  # other groups: computed again
    with pytest.raises(ValueError):
        folds[0][0][0] = 1  # shared between callers: read only
