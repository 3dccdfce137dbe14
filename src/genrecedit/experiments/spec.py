"""What one experiment runs: a short YAML (the run to use, the cells, the grids) as a typed, validated dataclass.

```yaml
run: runs/demo-base            # a trained run directory; trained first from ``train_config`` when it is missing
train_config: demo             # bundled name or YAML (only used to train ``run``)
overrides: [threads=1]         # run-config overrides applied when the run is loaded (``section.key=value``)
cells: [table1, table2, table3, table4, sources, fig3, fig5, fig6, fig7, fig8]
seeds: [0]                     # ablation seeds (Table 3)
lams: [300, 1000, 3000]        # λ candidates: selection on validation, Fig. 7
select_ns: [5]                 # n candidates in the selection
ns: [1, 3, 5, 10]              # pseudo-histories per item, Fig. 6 (at the chosen λ, on test)
sources: [pseudo, observed, pseudo+observed, upper_bound]
max_cases: 1000                # test cases (seeded sample; null = all)
valid_max_cases: 500           # validation cases for the selection
baselines: {sasrec: {}, bert4rec: {}, vqrec: {}, specgr: {}}
```
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from genrecedit.config import _build, read_config_tree
from genrecedit.errors import ConfigError

# every cell an experiment can run, in report order
CELLS: tuple[str, ...] = ("table1", "table2", "table3", "table4", "sources", "fig3", "fig5", "fig6", "fig7", "fig8")
SOURCES: tuple[str, ...] = ("pseudo", "observed", "pseudo+observed", "upper_bound")


@dataclass
class ExperimentConfig:
    """One experiment: a trained run (or the config to train it), the cells to run and their grids.

    Hyper-parameters (λ, n) are always chosen on validation cases (``runs.sweep.sweep``) and reported on test.
    """

    run: str
    train_config: str | None = None
    overrides: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=lambda: list(CELLS))
    seeds: list[int] = field(default_factory=lambda: [0])
    lams: list[float] = field(default_factory=lambda: [300.0, 1000.0, 3000.0])
    select_ns: list[int] = field(default_factory=lambda: [5])
    ns: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    max_cases: int | None = None
    valid_max_cases: int | None = None
    max_warm_drop: float = 0.05
    baselines: dict = field(default_factory=lambda: {"sasrec": {}, "bert4rec": {}, "vqrec": {}, "specgr": {}})
    baseline_dir: str | None = None  # where fitted baselines live (reused when config and data match)
    retrain: dict = field(default_factory=dict)  # Retrain budget: epochs / max_minutes / patience / eval_cases
    finetune: dict = field(default_factory=lambda: {"epochs": 3})  # finetune(): epochs / lr / batch_size

    def __post_init__(self) -> None:
        unknown = [c for c in self.cells if c not in CELLS]
        if unknown:
            raise ConfigError(f"unknown experiment cell(s) {unknown}; known: {list(CELLS)}")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise ConfigError(f"unknown knowledge source(s) {bad}; known: {list(SOURCES)}")
        if not self.lams or any(lam <= 0 for lam in self.lams):
            raise ConfigError(f"lams must be a non-empty list of positive numbers, got {self.lams}")
        if not self.select_ns or not self.ns or any(n < 1 for n in [*self.ns, *self.select_ns]):
            raise ConfigError(f"ns and select_ns must be non-empty lists of integers ≥ 1: {self.ns}, "
                              f"{self.select_ns}")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        for name, limit in (("max_cases", self.max_cases), ("valid_max_cases", self.valid_max_cases)):
            if limit is not None and limit < 1:
                raise ConfigError(f"{name} must be ≥ 1 or null, got {limit}")
        if not 0 <= self.max_warm_drop < 1:
            raise ConfigError(f"max_warm_drop must be in [0, 1), got {self.max_warm_drop}")
        if not isinstance(self.baselines, dict) or any(not isinstance(v, (dict, type(None)))
                                                       for v in self.baselines.values()):
            raise ConfigError(f"baselines must map a baseline name to its parameters, got {self.baselines!r}")
        self.baselines = {k: dict(v or {}) for k, v in self.baselines.items()}

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        from genrecedit.atomic import write_bytes

        write_bytes(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True).encode())


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """YAML file or bundled name (``experiment-demo``) plus ``key=value`` overrides (values parsed as YAML).

    A key that is not an experiment field (``threads=1``, ``decode.k=50``) is appended to the run-config
    ``overrides`` instead."""
    tree = read_config_tree(path, "experiment config")
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = (x.strip() for x in item.split("=", 1))
        if key in fields:
            tree[key] = yaml.safe_load(raw)
        else:  # not an experiment key: a run-config override (threads=1, decode.k=50), checked when the run loads
            tree["overrides"] = [*(tree.get("overrides") or []), f"{key}={raw}"]
    if "run" not in tree:
        raise ConfigError(f"{path}: 'run' (a trained run directory, or where to train one) is required")
    return _build(ExperimentConfig, tree, "experiment")
