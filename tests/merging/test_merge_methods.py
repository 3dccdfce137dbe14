"""Merge methods on small synthetic state dicts: identities, TIES' trim/elect/disjoint-mean, DARE's expectation."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.merging import methods


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"enc.w": torch.randn(5, 3, generator=g), "dec.w": torch.randn(7, generator=g).to(torch.bfloat16),
            "steps": torch.tensor([3, 1])}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_averaging_copies_of_one_model_returns_it_exactly():
    a = _state(0)
    assert _equal(methods.linear([a, a], [0.5, 0.5]), a)
    assert _equal(methods.linear([a, a, a], [1.0, 2.0, 3.0]), a)


def test_linear_weights_and_dtypes():
    a, b = _state(0), _state(1)
    b["steps"] = a["steps"].clone()
    out = methods.linear([a, b], [1.0, 3.0])
    assert torch.allclose(out["enc.w"], 0.25 * a["enc.w"] + 0.75 * b["enc.w"], atol=1e-6)
    assert out["dec.w"].dtype == torch.bfloat16 and torch.equal(out["steps"], a["steps"])


def test_task_arithmetic_with_weight_zero_is_the_base_exactly():
    base, ft = _state(0), _state(1)
    ft["steps"] = base["steps"].clone()
    assert _equal(methods.task_arithmetic(base, [ft], [0.0]), base)
    assert _equal(methods.task_arithmetic(base, [ft, base], [0.0, 5.0]), base)


def test_task_arithmetic_adds_scaled_task_vectors():
    base = {"w": torch.tensor([1.0, 2.0])}
    ft1, ft2 = {"w": torch.tensor([2.0, 2.0])}, {"w": torch.tensor([1.0, 6.0])}
    out = methods.task_arithmetic(base, [ft1, ft2], [0.5, 0.25])
    assert torch.equal(out["w"], torch.tensor([1.5, 3.0]))


def test_mismatched_keys_shapes_and_dtypes_are_refused():
    a = _state(0)
    with pytest.raises(ArtifactMismatchError, match="lacks"):
        methods.linear([a, {k: v for k, v in a.items() if k != "enc.w"}], [1, 1])
    with pytest.raises(ArtifactMismatchError, match=r"enc.w: .*\(5, 4\)"):
        methods.linear([a, {**a, "enc.w": torch.zeros(5, 4)}], [1, 1])
    with pytest.raises(ArtifactMismatchError, match="float16"):
        methods.task_arithmetic(a, [{**a, "dec.w": a["dec.w"].half()}], [1])
    with pytest.raises(ArtifactMismatchError, match="non-floating"):
        methods.linear([a, {**a, "steps": torch.tensor([0, 0])}], [1, 1])


def test_trim_keeps_the_top_density_fraction_by_magnitude():
    tau = torch.tensor([0.1, -4.0, 2.0, -0.5, 3.0])
    assert torch.equal(methods.trim_top_k(tau, 0.4), torch.tensor([0.0, -4.0, 0.0, 0.0, 3.0]))
    assert torch.equal(methods.trim_top_k(tau, 1.0), tau)
    assert torch.equal(methods.trim_top_k(tau, 0.0), torch.zeros(5))
    assert int((methods.trim_top_k(torch.randn(10, 10), 0.3) != 0).sum()) == 30


def test_ties_elects_sign_by_mass_and_averages_only_agreeing_entries():
    t1, t2 = torch.tensor([3.0, -1.0, 2.0, 1.0]), torch.tensor([-1.0, -4.0, 2.0, -1.0])
    out = methods.ties_combine([t1, t2], [1.0, 1.0], density=1.0)
    # entry 0: + wins, t2 excluded; 1: both -; 2: both +; 3: tie -> no sign -> 0
    assert torch.equal(out, torch.tensor([3.0, -2.5, 2.0, 0.0]))
    weighted = methods.ties_combine([torch.tensor([1.0]), torch.tensor([-2.0])], [3.0, 1.0], density=1.0)
    assert torch.equal(weighted, torch.tensor([1.0]))  # weighted mass 3 - 2 > 0: the + side wins
    summed = methods.ties_combine([t1, t2], [1.0, 1.0], density=1.0, normalize=False)
    assert torch.equal(summed, torch.tensor([3.0, -5.0, 4.0, 0.0]))


def test_ties_with_all_zero_task_vectors_is_the_base():
    base = _state(0)
    assert _equal(methods.ties(base, [base, base], [1.0, 2.0], density=0.5), base)


def test_ties_trims_before_electing():
    base = {"w": torch.zeros(4)}
    ft1 = {"w": torch.tensor([10.0, 0.1, 0.1, 0.1])}
    ft2 = {"w": torch.tensor([-0.2, 8.0, -0.2, -0.2])}
    out = methods.ties(base, [ft1, ft2], [1.0, 1.0], density=0.25)  # each keeps its largest entry only
    assert torch.equal(out["w"], torch.tensor([10.0, 8.0, 0.0, 0.0]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-10, 10, width=32), min_size=6, max_size=6), min_size=1, max_size=4),
       st.floats(0.0, 1.0), st.data())
def test_ties_entries_take_the_elected_sign_within_the_agreeing_range(rows, density, data):
    taus = [torch.tensor(r, dtype=torch.float64) for r in rows]
    weights = data.draw(st.lists(st.floats(0.1, 5.0), min_size=len(rows), max_size=len(rows)))
    out = methods.ties_combine(taus, weights, density)
    trimmed = torch.stack([w * methods.trim_top_k(t, density) for w, t in zip(weights, taus)])
    elected = torch.sign(trimmed.sum(0))
    assert torch.all((out == 0) | (torch.sign(out) == elected))
    raw = torch.stack([methods.trim_top_k(t, density) for t in taus])
    agree = (torch.sign(raw) == elected) & (raw != 0)
    lo = torch.where(agree, raw, torch.full_like(raw, torch.inf)).amin(0)
    hi = torch.where(agree, raw, torch.full_like(raw, -torch.inf)).amax(0)
    some = agree.any(0)
    # a disjoint weighted mean lies between the agreeing entries it averages; nothing agrees -> 0
    assert torch.all(~some | ((out >= lo - 1e-9) & (out <= hi + 1e-9)))
    assert torch.all(some | (out == 0))


def test_dare_without_dropping_is_task_arithmetic():
    base, ft1, ft2 = _state(0), _state(1), _state(2)
    ft1["steps"] = ft2["steps"] = base["steps"].clone()
    expected = methods.task_arithmetic(base, [ft1, ft2], [0.3, 0.7])
    assert _equal(methods.dare(base, [ft1, ft2], [0.3, 0.7], drop_rate=0.0, seed=4), expected)


def test_dare_is_seeded_and_unbiased():
    base = {"w": torch.zeros(20)}
    ft = {"w": torch.linspace(-1.0, 1.0, 20)}
    one = methods.dare(base, [ft], [1.0], drop_rate=0.5, seed=7)
    assert torch.equal(one["w"], methods.dare(base, [ft], [1.0], drop_rate=0.5, seed=7)["w"])
    assert not torch.equal(one["w"], methods.dare(base, [ft], [1.0], drop_rate=0.5, seed=8)["w"])
    dropped = one["w"] == 0
    assert dropped.any() and torch.allclose(one["w"][~dropped], 2.0 * ft["w"][~dropped])  # rescaled by 1/(1-p)
    mean = torch.stack([methods.dare(base, [ft], [1.0], drop_rate=0.5, seed=s)["w"] for s in range(1500)]).mean(0)
    assert torch.allclose(mean, ft["w"], atol=0.1)  # per-entry std of the mean <= 1/sqrt(1500) ~ 0.026


def test_invalid_parameters_are_refused():
    a = _state(0)
    with pytest.raises(ConfigError, match="drop_rate"):
        methods.dare(a, [a], [1.0], drop_rate=1.0)
    with pytest.raises(ConfigError, match="density"):
        methods.ties(a, [a], [1.0], density=1.5)
    with pytest.raises(ConfigError, match="non-negative"):
        methods.ties(a, [a], [-1.0], density=0.5)
    with pytest.raises(ConfigError, match="2 weights for 1 models"):
        methods.task_arithmetic(a, [a], [1.0, 1.0])
