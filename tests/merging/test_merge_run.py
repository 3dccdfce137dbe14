"""The merge run: refusing checkpoints that cannot be merged, and writing a run directory ``load_run`` accepts."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from genrecedit.cli import app
from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.merging.merge import MERGE_FILE, merge_models, unique_state
from genrecedit.merging.spec import parse_spec
from genrecedit.model.tiger import TigerConfig, build_tiger, load_model, save_model
from genrecedit.model.tokens import TokenLayout

SMALL = TigerConfig(d_model=8, num_heads=2, d_kv=4, encoder_layers=1, decoder_layers=1, d_ff=16, decoder_d_ff=16,
                    dropout=0.0)
LAYOUT = TokenLayout((4, 4))


def _save(path: Path, cfg: TigerConfig = SMALL, tokenizer_hash: str = "a" * 64, seed: int = 0) -> str:
    save_model(build_tiger(cfg, LAYOUT, seed=seed), cfg, LAYOUT, path, tokenizer_hash)
    return str(path)


def test_different_architectures_are_refused_naming_both(tmp_path):
    a = _save(tmp_path / "a")
    b = _save(tmp_path / "b", TigerConfig(**{**SMALL.__dict__, "d_ff": 24, "decoder_d_ff": 24}))
    spec = parse_spec({"merge_method": "linear", "models": [a, b]})
    with pytest.raises(ArtifactMismatchError, match=rf"{b} and {a} have different architectures: d_ff 24 vs 16"):
        merge_models(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_different_tokenizers_are_refused_naming_both(tmp_path):
    a = _save(tmp_path / "a")
    b = _save(tmp_path / "b", tokenizer_hash="b" * 64, seed=1)
    spec = parse_spec({"merge_method": "task_arithmetic", "base_model": a, "models": [a, b]})
    with pytest.raises(ArtifactMismatchError, match=rf"{b} and {a} were trained with different tokenizers"):
        merge_models(spec, tmp_path / "out")


def test_only_training_settings_may_differ(tmp_path):
    a = _save(tmp_path / "a")
    b = _save(tmp_path / "b", TigerConfig(**{**SMALL.__dict__, "dropout": 0.1}), seed=1)
    spec = parse_spec({"merge_method": "linear", "models": [a, b]})
    with pytest.raises(ArtifactMismatchError, match="not inside a run directory"):  # got past the checks
        merge_models(spec, tmp_path / "out")


@pytest.fixture(scope="module")
def perturbed_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of ``tiny_run`` whose every weight moved a little: a stand-in for a fine-tuned context model."""
    run = tmp_path_factory.mktemp("merging") / "perturbed"
    shutil.copytree(tiny_run, run)
    model, cfg, layout, meta = load_model(run / "model")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in unique_state(model).values():
            tensor.add_(0.01 * torch.randn(tensor.shape, generator=g))
    save_model(model, cfg, layout, run / "model", meta.tokenizer_hash)
    return run


def test_merge_writes_a_run_directory_that_load_run_accepts(tiny_run, perturbed_run, tmp_path):
    from genrecedit.runs.backbone import load_run

    spec = parse_spec({"merge_method": "linear", "models": [str(tiny_run), str(perturbed_run / "model")]})
    result = merge_models(spec, tmp_path / "merged")
    assert result.weights == [1.0, 1.0]
    run = load_run(result.run_dir)
    assert run.base_hash == result.weights_hash
    merged = unique_state(run.recommender.model)
    a, b = unique_state(load_model(tiny_run / "model")[0]), unique_state(load_model(perturbed_run / "model")[0])
    for key, tensor in merged.items():
        assert torch.allclose(tensor, (a[key] + b[key]) / 2, atol=1e-6), key
    written = yaml.safe_load((result.run_dir / MERGE_FILE).read_text())
    assert written["merge_method"] == "linear" and written["resolved"]["output_weights_hash"] == result.weights_hash
    assert written["models"][0]["model"] == str(tiny_run.resolve())
    assert not list(tmp_path.glob(".merged*"))  # the temp directory was renamed away
    with pytest.raises(ConfigError, match="already exists"):
        merge_models(spec, result.run_dir)


def test_cli_merge_with_base_model_replacement(tiny_run, perturbed_run, tmp_path):
    # task vectors against the perturbed model instead of the one they were trained from; weight 0 -> that base
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "merge_method": "task_arithmetic", "base_model": str(perturbed_run),
        "models": [{"model": str(tiny_run), "weight": 0.0}],
    }))
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", str(spec_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "merged 1 models" in result.output
    merged, base = load_model(out / "model")[3], load_model(perturbed_run / "model")[3]
    assert merged.weights_hash == base.weights_hash
    again = CliRunner().invoke(app, ["merge", str(spec_path), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert CliRunner().invoke(app, ["merge", str(spec_path), "--out", str(out), "--overwrite"]).exit_code == 0


def test_merge_states_dispatch_and_normalisation():
    from genrecedit.merging.merge import merge_states

    base, m1, m2 = {"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}

    def run(method: str, **params) -> float:
        spec = parse_spec({"merge_method": method, "models": [{"model": "a", "weight": 1.0},
                                                               {"model": "b", "weight": 3.0}],
                           **({"base_model": "base"} if method != "linear" else {}), "parameters": params})
        return float(merge_states(spec, [m1, m2], spec.weights(), base)["w"])

    assert run("linear") == 3.5  # (1*2 + 3*4) / 4
    assert run("task_arithmetic") == 14.0  # weights are the scales
    assert run("task_arithmetic", normalize=True) == 3.5
    assert run("ties", density=1.0) == 3.5  # disjoint weighted mean
    assert run("dare", drop_rate=0.0) == 14.0
