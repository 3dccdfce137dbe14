"""Merge trained checkpoints as a ``MergeSpec`` says, into a normal run directory.

The output is what ``genrecedit evaluate`` / ``edit`` expect: ``config.yaml`` and ``tokenizer/`` copied from the first
model's run, ``model/`` written by ``save_model``, plus ``merge.yaml`` (the resolved spec and where every weight came
from). Checkpoints must share the architecture and the tokenizer: merging parameters of models over different SID
vocabularies would add up unrelated token embeddings.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.merging import methods
from genrecedit.merging.methods import StateDict
from genrecedit.merging.spec import MergeSpec
from genrecedit.model.tiger import META_FILE, ModelMeta, TigerConfig, load_model, save_model
from genrecedit.model.tokens import TokenLayout
from genrecedit.runs.backbone import CONFIG_FILE, MODEL_DIR
from genrecedit.runs.prepare import TOKENIZER_DIR

MERGE_FILE = "merge.yaml"
# copied beside config.yaml when present: they describe the data and tokenizer, which the merge leaves unchanged
RUN_DESCRIPTION_FILES = ("split_summary.json", "tokenizer_stats.json")
# training-only settings: checkpoints that differ only here still have the same parameters
NON_ARCHITECTURE_FIELDS = ("dropout",)


@dataclass
class Checkpoint:
    """One loaded model: where it lives (its run directory, if it is inside one) and its parameters."""

    source: str
    model_dir: Path
    run_dir: Path | None
    model: torch.nn.Module
    config: TigerConfig
    layout: TokenLayout
    meta: ModelMeta

    @property
    def state(self) -> StateDict:
        return unique_state(self.model)


@dataclass
class MergeResult:
    run_dir: Path
    weights: list[float]
    weights_hash: str


def merge_models(spec: MergeSpec, out_dir: Path, overwrite: bool = False) -> MergeResult:
    """Load every checkpoint of ``spec``, check they can be merged, merge, write a run directory at ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"output {out_dir} already exists; choose another directory or overwrite it")
    spec = spec.resolved()
    models = [load_checkpoint(m.model) for m in spec.models]
    base = load_checkpoint(spec.base_model) if spec.base_model else None
    check_mergeable([*models, *([base] if base else [])])
    if models[0].run_dir is None:
        raise ArtifactMismatchError(f"{models[0].model_dir} is not inside a run directory ({CONFIG_FILE} + "
                                    f"{TOKENIZER_DIR}/); the first model must be, so the merge can be evaluated")
    sources = {m.model_dir.resolve() for m in models} | {m.run_dir.resolve() for m in models if m.run_dir}
    if base is not None:
        sources |= {base.model_dir.resolve(), *([base.run_dir.resolve()] if base.run_dir else [])}
    if out_dir.resolve() in sources:
        raise ConfigError(f"output {out_dir} is one of the merged checkpoints; write the merge elsewhere")

    weights = spec.weights()
    merged = merge_states(spec, [m.state for m in models], weights, base.state if base else None)
    first = models[0]
    _load_into(first.model, merged)
    provenance = {
        "weights": weights,
        "models": [_describe(m) for m in models],
        "base_model": _describe(base) if base else None,
    }
    meta = _write_run(out_dir, first, spec, provenance, overwrite)
    return MergeResult(out_dir, weights, meta.weights_hash)


def merge_states(spec: MergeSpec, states: list[StateDict], weights: list[float],
                 base: StateDict | None = None) -> StateDict:
    """Dispatch to the spec's merge method. Task-vector sums use normalised weights only when asked to."""
    p = spec.parameters
    if spec.merge_method == "linear":
        return methods.linear(states, weights, spec.normalize)
    if base is None:
        raise ConfigError(f"merge_method {spec.merge_method} needs base_model")
    if spec.merge_method == "ties":
        return methods.ties(base, states, weights, p.density, spec.normalize)
    if spec.normalize:
        weights = [w / sum(weights) for w in weights]
    if spec.merge_method == "dare":
        return methods.dare(base, states, weights, p.drop_rate, p.seed)
    return methods.task_arithmetic(base, states, weights)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A run directory (``config.yaml`` + ``model/``) or a model directory (``model.json``) -> Checkpoint."""
    path = Path(path)
    if (path / META_FILE).is_file():
        model_dir = path
        run_dir = path.parent if _is_run_dir(path.parent) else None
    elif (path / MODEL_DIR / META_FILE).is_file():
        model_dir, run_dir = path / MODEL_DIR, path
    else:
        raise ArtifactMismatchError(f"{path} is neither a run directory ({CONFIG_FILE} + {MODEL_DIR}/) nor a model "
                                    f"directory ({META_FILE})")
    model, cfg, layout, meta = load_model(model_dir, "cpu")
    return Checkpoint(str(path), model_dir, run_dir if run_dir and _is_run_dir(run_dir) else None, model, cfg,
                      layout, meta)


def check_mergeable(checkpoints: list[Checkpoint]) -> None:
    """Same architecture, token layout and tokenizer everywhere; else ArtifactMismatchError naming both."""
    ref = checkpoints[0]
    for other in checkpoints[1:]:
        a, b = _architecture(ref.config), _architecture(other.config)
        if a != b:
            diff = ", ".join(f"{k} {b[k]} vs {a[k]}" for k in a if a[k] != b[k])
            raise ArtifactMismatchError(f"{other.source} and {ref.source} have different architectures: {diff}")
        if other.layout != ref.layout:
            raise ArtifactMismatchError(f"{other.source} and {ref.source} have different token layouts: "
                                        f"{other.layout.sizes} vs {ref.layout.sizes}")
        if other.meta.tokenizer_hash != ref.meta.tokenizer_hash:
            raise ArtifactMismatchError(
                f"{other.source} and {ref.source} were trained with different tokenizers "
                f"({other.meta.tokenizer_hash[:12]} vs {ref.meta.tokenizer_hash[:12]}); their SID tokens mean "
                f"different items, so their parameters cannot be merged")
    methods.check_compatible([c.state for c in checkpoints], [c.source for c in checkpoints])


def unique_state(model: torch.nn.Module) -> StateDict:
    """The state dict without aliases (the shared token embedding appears under three names): first name wins."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out: StateDict = {}
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident not in seen:
            seen.add(ident)
            out[key] = tensor
    return out


def _is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / TOKENIZER_DIR).is_dir() and (path / MODEL_DIR).is_dir()


def _architecture(cfg: TigerConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in NON_ARCHITECTURE_FIELDS}


def _describe(c: Checkpoint) -> dict:
    return {"model": str(c.model_dir.resolve()), "weights_hash": c.meta.weights_hash,
            "tokenizer_hash": c.meta.tokenizer_hash}


def _load_into(model: torch.nn.Module, state: StateDict) -> None:
    # state_dict() tensors share storage with the parameters, so copying into them updates the model
    target = model.state_dict()
    with torch.no_grad():
        for key, tensor in state.items():
            target[key].copy_(tensor)


def _write_run(out_dir: Path, first: Checkpoint, spec: MergeSpec, provenance: dict, overwrite: bool) -> ModelMeta:
    """Build the run directory in a temp folder beside ``out_dir``, then rename it into place."""
    assert first.run_dir is not None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        shutil.copy2(first.run_dir / CONFIG_FILE, tmp / CONFIG_FILE)
        shutil.copytree(first.run_dir / TOKENIZER_DIR, tmp / TOKENIZER_DIR)
        for name in RUN_DESCRIPTION_FILES:
            if (first.run_dir / name).is_file():
                shutil.copy2(first.run_dir / name, tmp / name)
        meta = save_model(first.model, first.config, first.layout, tmp / MODEL_DIR, first.meta.tokenizer_hash,
                          extra={"merge": {"merge_method": spec.merge_method, **provenance}})
        spec.save(tmp / MERGE_FILE, {**provenance, "output_weights_hash": meta.weights_hash})
        _replace_dir(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _replace_dir(src: Path, dst: Path, overwrite: bool) -> None:
    if not dst.exists():
        os.replace(src, dst)
        return
    if not overwrite:
        raise ConfigError(f"output {dst} already exists")
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
