"""The MMGRid grid's configuration: one typed dataclass tree loaded from a short YAML file.

    kind: temporal                      # temporal | cross_domain
    run_config: demo                    # the RunConfig every cell is trained under (bundled name or YAML path)
    overrides: [threads=1]              # its -o overrides
    base_budget: {epochs: 3, max_minutes: 8}
    finetune_budget: {epochs: 2, max_minutes: 3, lr: 0.001, warmup_steps: 20}
    eval_max_cases: 500                 # cases sampled (seeded) per evaluation set
    temporal: {period_quantiles: [0.55, 0.7, 0.8, 0.9], valid_user_fraction: 0.1, eval_user_fraction: 0.1}
    cross_domain: {domains: [{name: game, dataset: amazon2018-game, max_users: 4000}, ...]}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from genrecedit.atomic import write_bytes
from genrecedit.config import RunConfig, _set_dotted, load_config, read_config_tree
from genrecedit.errors import ConfigError

GridKind = Literal["temporal", "cross_domain"]


@dataclass
class Budget:
    """How long one cell trains. ``None`` keeps the run config's value."""

    epochs: int = 2
    max_minutes: float | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    patience: int | None = None


@dataclass
class TemporalGrid:
    """Periods by global timestamp quantile: P0 = [start, q_0), P_i = [q_{i-1}, q_i), test T = [q_last, end].

    Users are split once (seeded): ``valid_user_fraction`` of them give early-stopping cases, ``eval_user_fraction``
    give the per-period evaluation cases; neither is ever trained on. The test period is never trained on, so all
    users' test cases are evaluated."""

    period_quantiles: list[float] = field(default_factory=lambda: [0.55, 0.7, 0.8, 0.9])
    valid_user_fraction: float = 0.1
    eval_user_fraction: float = 0.1
    union_cell: bool = True  # also fine-tune the base on P1 ∪ … ∪ P_last (the "retrain on the union" reference)


@dataclass
class Domain:
    name: str
    dataset: str
    max_users: int | None = None  # seeded user sample, to fit a CPU budget


@dataclass
class CrossDomainGrid:
    """Two (or more) domains, one tokenizer fitted on the union of their training items, a base trained on the union
    of their training cases, and one checkpoint per domain fine-tuned from it, each tested on its own domain."""

    domains: list[Domain] = field(default_factory=list)
    alphas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])  # linear merges: weight of domain 0


@dataclass
class GridConfig:
    kind: GridKind = "temporal"
    run_config: str | None = "demo"  # None: the RunConfig defaults
    overrides: list[str] = field(default_factory=list)
    base_budget: Budget = field(default_factory=lambda: Budget(epochs=3))
    finetune_budget: Budget = field(default_factory=Budget)
    eval_max_cases: int = 500
    eval_seed: int = 0
    user_seed: int = 0
    edit_merged: bool = True  # GenRecEdit on one merged model (temporal grid), cold metrics before/after
    temporal: TemporalGrid = field(default_factory=TemporalGrid)
    cross_domain: CrossDomainGrid = field(default_factory=CrossDomainGrid)

    def __post_init__(self) -> None:
        if self.kind not in get_args(GridKind):
            raise ConfigError(f"kind {self.kind!r} is not one of {list(get_args(GridKind))}")
        q = self.temporal.period_quantiles
        if len(q) < 3 or any(not 0.0 < a < b < 1.0 for a, b in zip(q, q[1:])) or not 0.0 < q[0]:
            raise ConfigError(f"temporal.period_quantiles must be ≥ 3 increasing values in (0, 1) (P0 end, P1 end, "
                              f"…, test start), got {q}")
        t = self.temporal
        if not (0 < t.valid_user_fraction and 0 < t.eval_user_fraction
                and t.valid_user_fraction + t.eval_user_fraction < 1):
            raise ConfigError(f"user fractions must be positive and sum below 1, got {t.valid_user_fraction}, "
                              f"{t.eval_user_fraction}")
        if self.kind == "cross_domain" and len(self.cross_domain.domains) < 2:
            raise ConfigError("cross_domain.domains: list at least two domains")
        if self.eval_max_cases < 1:
            raise ConfigError(f"eval_max_cases must be ≥ 1, got {self.eval_max_cases}")

    def run(self, extra: list[str] | None = None) -> RunConfig:
        """The RunConfig of the cells, with the grid's overrides and then ``extra``."""
        return load_config(self.run_config, [*self.overrides, *(extra or [])])

    def save(self, path: Path) -> None:
        write_bytes(Path(path), yaml.safe_dump(asdict(self), sort_keys=False).encode())


def load_grid_config(path: str | Path, overrides: list[str] | None = None) -> GridConfig:
    """A YAML file or a bundled name (``mmgrid-ml100k``) -> GridConfig. ``overrides`` (``a.b=value``, YAML
    values) apply to the grid's own keys; ``run.<key>=value`` is appended to the cells' run-config overrides."""
    tree = read_config_tree(path, "grid config")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        if key.startswith("run."):
            tree.setdefault("overrides", []).append(f"{key[4:]}={raw}")
            continue
        _set_dotted(tree, key, yaml.safe_load(raw))
    try:
        return _build(GridConfig, tree, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


_NESTED = {"base_budget": Budget, "finetune_budget": Budget, "temporal": TemporalGrid,
           "cross_domain": CrossDomainGrid}


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'grid config'}: expected a mapping, got {data!r}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'grid config'}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        sub = f"{where}.{key}".strip(".")
        if key in _NESTED and cls in (GridConfig,):
            kwargs[key] = _build(_NESTED[key], value, sub)
        elif cls is CrossDomainGrid and key == "domains":
            if not isinstance(value, list):
                raise ConfigError(f"{sub}: expected a list of {{name, dataset, max_users}}")
            kwargs[key] = [_build(Domain, d, f"{sub}[{i}]") for i, d in enumerate(value)]
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where or 'grid config'}: {err}") from err
