"""A merge described by a short mergekit-style YAML file, parsed into one validated dataclass.

    merge_method: ties                 # linear | task_arithmetic | ties | dare
    base_model: runs/base              # run or model dir; task vectors are taken against it
    models:                            # run dirs (or their model/ dirs), oldest context first
      - model: runs/p1
        weight: 0.3
        context: {phase: P1}
      - model: runs/p2
        weight: 0.7
    parameters: {density: 0.5, drop_rate: 0.5, seed: 0, normalize: true}
    weighting: {scheme: explicit}      # explicit (each model's weight) | uniform | recency (+ half_life)
    contexts: {domain: games}          # free-form metadata, kept with the merge

Relative paths are taken from the working directory, like every other path of a run. ``base_model`` may differ from
the model the checkpoints were fine-tuned from ("base-model replacement", docs/method.md §7): only the architecture and
tokenizer have to match.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from genrecedit.errors import ConfigError

MergeMethod = Literal["linear", "task_arithmetic", "ties", "dare"]
WeightScheme = Literal["explicit", "uniform", "recency"]
METHODS: tuple[str, ...] = get_args(MergeMethod)
SCHEMES: tuple[str, ...] = get_args(WeightScheme)
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare")
# mergekit's defaults: averages are normalised, task-vector sums are not (the weights are the scales lambda_i)
NORMALIZE_BY_DEFAULT = {"linear": True, "task_arithmetic": False, "ties": True, "dare": False}
RESOLVED_KEY = "resolved"  # written into merge.yaml by the merge for provenance; ignored when read back


@dataclass
class ModelEntry:
    model: str
    weight: float | None = None  # None: 1.0 under the explicit scheme; must be None under the others
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeParameters:
    density: float = 0.5  # ties: fraction of each task vector's entries kept (by magnitude)
    drop_rate: float = 0.5  # dare: probability of dropping an entry
    seed: int = 0  # dare: mask seed
    normalize: bool | None = None  # None: the method's default (NORMALIZE_BY_DEFAULT)


@dataclass
class Weighting:
    """How the models' weights are chosen. ``recency``: ``0.5 ** (age / half_life)``, age = 0 for the newest (last)
    model, 1 for the one before, …, normalised to sum to 1 (weighted contextual merging, docs/method.md §7)."""

    scheme: WeightScheme = "explicit"
    half_life: float | None = None  # recency only, in checkpoints


@dataclass
class MergeSpec:
    models: list[ModelEntry]
    merge_method: MergeMethod
    base_model: str | None = None
    parameters: MergeParameters = field(default_factory=MergeParameters)
    weighting: Weighting = field(default_factory=Weighting)
    contexts: Any = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def normalize(self) -> bool:
        p = self.parameters.normalize
        return NORMALIZE_BY_DEFAULT[self.merge_method] if p is None else p

    def weights(self) -> list[float]:
        """One weight per model, in the order listed."""
        n = len(self.models)
        if self.weighting.scheme == "uniform":
            return [1.0 / n] * n
        if self.weighting.scheme == "recency":
            return recency_weights(n, float(self.weighting.half_life))  # type: ignore[arg-type]
        return [1.0 if m.weight is None else float(m.weight) for m in self.models]

    def validate(self) -> None:
        if self.merge_method not in METHODS:
            raise ConfigError(f"merge_method {self.merge_method!r} is not one of {list(METHODS)}")
        if not self.models:
            raise ConfigError("models: list at least one model to merge")
        uses_base = self.merge_method in TASK_VECTOR_METHODS
        if uses_base and not self.base_model:
            raise ConfigError(f"merge_method {self.merge_method} merges task vectors (model - base): set base_model")
        if not uses_base and self.base_model:
            raise ConfigError(f"merge_method {self.merge_method} averages the models and ignores base_model; "
                              f"remove base_model or use one of {list(TASK_VECTOR_METHODS)}")
        self._validate_weighting()
        p = self.parameters
        if not 0.0 <= p.density <= 1.0:
            raise ConfigError(f"parameters.density must be in [0, 1], got {p.density}")
        if not 0.0 <= p.drop_rate < 1.0:
            raise ConfigError(f"parameters.drop_rate must be in [0, 1), got {p.drop_rate}")
        weights = self.weights()
        if self.merge_method == "ties" and any(w < 0 for w in weights):
            raise ConfigError(f"ties needs non-negative weights (a negative one flips its sign vote), got {weights}")
        if self.normalize and sum(weights) == 0:
            raise ConfigError(f"weights {weights} sum to 0, so they cannot be normalised; "
                              f"set parameters.normalize: false")

    def _validate_weighting(self) -> None:
        scheme, half_life = self.weighting.scheme, self.weighting.half_life
        if scheme not in SCHEMES:
            raise ConfigError(f"weighting.scheme {scheme!r} is not one of {list(SCHEMES)}")
        if scheme == "recency" and (half_life is None or not half_life > 0 or not math.isfinite(half_life)):
            raise ConfigError(f"weighting.scheme recency needs a positive half_life (in checkpoints), got {half_life}")
        if scheme != "recency" and half_life is not None:
            raise ConfigError(f"weighting.half_life is only used by scheme recency, not {scheme}")
        if scheme != "explicit":
            given = [m.model for m in self.models if m.weight is not None]
            if given:
                raise ConfigError(f"weighting.scheme {scheme} sets every weight, but {given} also give a weight: "
                                  f"remove those weights or use scheme: explicit")
        for m in self.models:
            if m.weight is not None and not math.isfinite(m.weight):
                raise ConfigError(f"models: weight of {m.model} must be a finite number, got {m.weight}")

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self) -> "MergeSpec":
        """The same merge with absolute paths and the method's normalise default spelled out."""
        models = [ModelEntry(str(Path(m.model).resolve()), m.weight, dict(m.context)) for m in self.models]
        base = str(Path(self.base_model).resolve()) if self.base_model else None
        params = MergeParameters(**{**asdict(self.parameters), "normalize": self.normalize})
        return MergeSpec(models, self.merge_method, base, params, Weighting(**asdict(self.weighting)), self.contexts)

    def save(self, path: Path, resolved: dict | None = None) -> None:
        """Write the spec (plus an optional provenance block that ``load_spec`` ignores) atomically."""
        path = Path(path)
        data = self.to_dict() | ({RESOLVED_KEY: resolved} if resolved is not None else {})
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path)


def recency_weights(n: int, half_life: float) -> list[float]:
    """n weights for checkpoints listed oldest first: ``0.5 ** (age / half_life)`` normalised, newest heaviest."""
    raw = [0.5 ** ((n - 1 - i) / half_life) for i in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


def load_spec(path: Path | str) -> MergeSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"merge spec {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    try:
        return parse_spec(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def parse_spec(data: Any) -> MergeSpec:
    """A mapping as read from YAML -> MergeSpec, with a ConfigError naming the offending key."""
    data = _mapping(data, "merge spec")
    data = {k: v for k, v in data.items() if k != RESOLVED_KEY}
    _known(data, MergeSpec, "merge spec")
    if "merge_method" not in data:
        raise ConfigError(f"merge spec: merge_method is required (one of {list(METHODS)})")
    models = data.get("models")
    if not isinstance(models, list):
        raise ConfigError(f"models: expected a list of {{model: <dir>, weight: <number>}}, got {models!r}")
    base = data.get("base_model")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"base_model: expected a directory path, got {base!r}")
    return MergeSpec(
        models=[_model_entry(m, i) for i, m in enumerate(models)],
        merge_method=_string(data["merge_method"], "merge_method"),  # type: ignore[arg-type]
        base_model=base,
        parameters=_parameters(data.get("parameters") or {}),
        weighting=_weighting(data.get("weighting") or {}),
        contexts=data.get("contexts"),
    )


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def _known(data: dict, cls: type, where: str) -> None:
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)  # YAML reads 1e3 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


def _model_entry(value: Any, i: int) -> ModelEntry:
    where = f"models[{i}]"
    if isinstance(value, str):
        return ModelEntry(value)
    value = _mapping(value, where)
    _known(value, ModelEntry, where)
    if "model" not in value:
        raise ConfigError(f"{where}: needs model: <run dir or model dir>")
    weight = value.get("weight")
    context = value.get("context") or {}
    return ModelEntry(_string(value["model"], f"{where}.model"),
                      None if weight is None else _number(weight, f"{where}.weight"),
                      _mapping(context, f"{where}.context"))


def _parameters(value: Any) -> MergeParameters:
    value = _mapping(value, "parameters")
    _known(value, MergeParameters, "parameters")
    p = MergeParameters()
    if "density" in value:
        p.density = _number(value["density"], "parameters.density")
    if "drop_rate" in value:
        p.drop_rate = _number(value["drop_rate"], "parameters.drop_rate")
    if "seed" in value:
        if isinstance(value["seed"], bool) or not isinstance(value["seed"], int):
            raise ConfigError(f"parameters.seed: expected an integer, got {value['seed']!r}")
        p.seed = value["seed"]
    if value.get("normalize") is not None:
        if not isinstance(value["normalize"], bool):
            raise ConfigError(f"parameters.normalize: expected true or false, got {value['normalize']!r}")
        p.normalize = value["normalize"]
    return p


def _weighting(value: Any) -> Weighting:
    value = _mapping(value, "weighting")
    _known(value, Weighting, "weighting")
    half_life = value.get("half_life")
    return Weighting(_string(value.get("scheme", "explicit"), "weighting.scheme"),  # type: ignore[arg-type]
                     None if half_life is None else _number(half_life, "weighting.half_life"))
