"""The merge spec: parsing the mergekit-style YAML, validation messages, recency weights."""
from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from genrecedit.errors import ConfigError
from genrecedit.merging.spec import load_spec, parse_spec, recency_weights

EXAMPLE = """
merge_method: ties
base_model: runs/base
models:
  - model: runs/p1
    weight: 0.3
    context: {phase: P1}
  - model: runs/p2
    weight: 0.7
parameters: {density: 0.5, seed: 0, normalize: true}
contexts: {domain: games}
"""


def test_example_parses(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(EXAMPLE)
    spec = load_spec(path)
    assert spec.merge_method == "ties" and spec.base_model == "runs/base"
    assert [m.model for m in spec.models] == ["runs/p1", "runs/p2"]
    assert spec.weights() == [0.3, 0.7] and spec.models[0].context == {"phase": "P1"}
    assert spec.parameters.density == 0.5 and spec.normalize is True and spec.contexts == {"domain": "games"}


def test_saved_spec_reads_back_and_ignores_provenance(tmp_path):
    spec = parse_spec(yaml.safe_load(EXAMPLE))
    spec.save(tmp_path / "m.yaml", resolved={"weights": [0.3, 0.7]})
    assert load_spec(tmp_path / "m.yaml") == spec


def test_normalize_defaults_follow_the_method():
    models = [{"model": "a"}, {"model": "b"}]
    assert parse_spec({"merge_method": "linear", "models": models}).normalize is True
    assert parse_spec({"merge_method": "task_arithmetic", "base_model": "x", "models": models}).normalize is False
    assert parse_spec({"merge_method": "dare", "base_model": "x", "models": models,
                       "parameters": {"normalize": True}}).normalize is True


@pytest.mark.parametrize("change, message", [
    ({"merge_method": "slerp"}, "not one of"),
    ({"base_model": None}, "set base_model"),
    ({"merge_method": "linear"}, "ignores base_model"),
    ({"models": []}, "at least one model"),
    ({"models": [{"weight": 1}]}, r"models\[0\]: needs model"),
    ({"models": [{"model": "a", "weight": "heavy"}]}, r"models\[0\].weight: expected a number"),
    ({"models": [{"model": "a", "weight": -1.0}]}, "non-negative"),
    ({"parameters": {"density": 2}}, "density must be in"),
    ({"parameters": {"densty": 0.5}}, r"unknown key\(s\) \['densty'\]"),
    ({"weighting": {"scheme": "recency"}}, "positive half_life"),
    ({"weighting": {"scheme": "recency", "half_life": 2}}, "also give a weight"),
    ({"weighting": {"scheme": "uniform", "half_life": 2}}, "only used by scheme recency"),
    ({"extra": 1}, "unknown key"),
])
def test_invalid_specs_say_what_is_wrong(change, message):
    data = {**yaml.safe_load(EXAMPLE), **change}
    with pytest.raises(ConfigError, match=message):
        parse_spec(data)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("models: [")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_spec(tmp_path / "bad.yaml")


def test_uniform_and_recency_schemes():
    models = [{"model": f"p{i}"} for i in range(3)]
    spec = parse_spec({"merge_method": "linear", "models": models, "weighting": {"scheme": "uniform"}})
    assert spec.weights() == pytest.approx([1 / 3] * 3)
    spec = parse_spec({"merge_method": "linear", "models": models,
                       "weighting": {"scheme": "recency", "half_life": 1}})
    assert spec.weights() == pytest.approx([1 / 7, 2 / 7, 4 / 7])  # each step older halves the weight


@given(st.integers(1, 12), st.floats(0.05, 50.0))
def test_recency_weights_sum_to_one_and_decay_with_age(n, half_life):
    weights = recency_weights(n, half_life)
    assert sum(weights) == pytest.approx(1.0)
    by_age = weights[::-1]  # listed oldest first; age 0 is the newest
    assert all(a > b for a, b in zip(by_age, by_age[1:]))
