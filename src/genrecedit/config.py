"""Run configuration: one typed tree of dataclasses, loaded from YAML with ``a.b=value`` overrides, saved next to
every run's outputs."""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from genrecedit.coldstart.prior import PriorConfig
from genrecedit.data.protocols import SplitConfig
from genrecedit.edit.artifact import TriggerMode
from genrecedit.edit.editor import EditConfig
from genrecedit.errors import ConfigError
from genrecedit.model.recommender import DecodeConfig
from genrecedit.model.tiger import TigerConfig
from genrecedit.model.train import TrainConfig
from genrecedit.tokenizer.config import TokenizerConfig

PACKAGE_CONFIGS = Path(__file__).parent / "configs"


@dataclass
class EmbeddingConfig:
    encoder: Literal["minilm", "hashing"] = "minilm"
    batch_size: int = 64


@dataclass
class KnowledgeConfig:
    """Where the edit's requests come from (docs/method.md §5.2)."""

    source: Literal["pseudo", "successor", "observed", "pseudo+observed", "upper_bound"] = "pseudo"
    histories_per_item: int = 5  # n
    neighbours: int = 10  # top-k similar warm items


@dataclass
class EvalConfig:
    cases: Literal["test", "valid"] = "test"  # which split's cases evaluate/sweep score (selection uses valid)
    max_cases: int | None = None  # sample cases (seeded) to bound evaluation time; None = all
    # one_one: the paper; prefix: one-one, and a ΔW_t fires only after a decoded prefix of an edited item (same cold
    # scores, less collateral on other beams); preserve: prefix, and every item no edit teaches keeps the unedited
    # model's score (the edit only adds the new items to the ranking); all: the w/o one-one triggering ablation
    trigger: TriggerMode = "prefix"
    seed: int = 0
    bootstrap: int = 1000


@dataclass
class RunConfig:
    dataset: str = "ml-100k"
    data_root: str | None = None
    cache_dir: str = ".cache"
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: TigerConfig = field(default_factory=TigerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # the decode-time content prior (genrecedit.coldstart.prior): off unless a config or `coldstart` turns it on
    prior: PriorConfig = field(default_factory=PriorConfig)
    # a fitted calibrated insertion (genrecedit.coldstart.insertion; a JSON file, relative to the run directory,
    # written by `coldstart --adopt`): served instead of the prior when set
    insertion: str | None = None

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(tmp, path)


# Knobs added after experiment cells were first cached, with the value that reproduces what came before: cache keys
# leave them out at that value, so adding a knob does not invalidate every finished cell. (A changed *default* needs
# no entry: resolved configs always spell the value out.)
CACHE_NEUTRAL: dict[tuple[str, str], Any] = {("edit", "lam_scale"): None, ("edit", "probe_backend"): "sklearn"}


def cache_view(tree: dict, section: str | None = None) -> dict:
    """A resolved config (or one ``section`` of it) as cache keys hash it: CACHE_NEUTRAL fields at their neutral
    value dropped."""
    def strip(name: str, part: dict) -> dict:
        return {k: v for k, v in part.items()
                if not ((name, k) in CACHE_NEUTRAL and v == CACHE_NEUTRAL[(name, k)])}

    if section is not None:
        return strip(section, tree)
    return {k: strip(k, v) if isinstance(v, dict) else v for k, v in tree.items()}


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls: type, data: dict, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a (partial) mapping, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}".strip("."))
        else:
            kwargs[name] = _coerce(hint, value, f"{where}.{name}".strip("."))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from err


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args or hint is Any:
            return None
        raise ConfigError(f"{where}: null is not allowed")
    if dataclasses.is_dataclass(hint):  # an optional section (e.g. prior.novel)
        return value if isinstance(value, hint) else _build(hint, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in args:
            if arg is type(None):
                continue
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):  # its own errors say what is wrong
                return _build(arg, value, where)
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {hint}")
    if origin is tuple:
        return tuple(value)
    if hint is float and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 1e3 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = value


def read_config_tree(path: Path | str, kind: str) -> dict:
    """A YAML file, or a bundled config's name (``demo``, ``mmgrid-ml100k``, ``experiment-demo``) -> its mapping.
    ``kind`` names the config in errors ("config", "grid config", …)."""
    p = Path(path)
    if not p.exists() and (PACKAGE_CONFIGS / f"{path}.yaml").exists():
        p = PACKAGE_CONFIGS / f"{path}.yaml"
    if not p.is_file():
        raise ConfigError(f"{kind} {path} not found (nor a bundled one: {sorted(bundled_configs())})")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: invalid YAML: {err}") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return tree


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (or a bundled config's name, e.g. ``demo``) plus ``section.key=value`` overrides -> RunConfig.

    Values in overrides are parsed as YAML (``train.epochs=3``, ``edit.lam=1e3``, ``split.protocol=holdout``).
    """
    tree: dict = {} if path is None else read_config_tree(path, "config")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return _build(RunConfig, tree, "")


def bundled_configs() -> list[str]:
    return [p.stem for p in PACKAGE_CONFIGS.glob("*.yaml")]
