"""Shared pieces of the benchmarks: sizing configs, base runs, hardware notes, evaluation and result files.

Every benchmark writes ``<out>/<name>.json`` (numbers, config, hardware) and ``<out>/<name>.md`` (a table).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from genrecedit.atomic import write_bytes, write_json
from genrecedit.coldstart.exposure import exposure
from genrecedit.config import load_config
from genrecedit.data.dataset import CaseSet
from genrecedit.errors import ConfigError
from genrecedit.evaluation.bootstrap import paired_bootstrap_diff
from genrecedit.evaluation.report import EvalResult
from genrecedit.model.beam import Beams, EditSchedule
from genrecedit.runs.backbone import LoadedRun, load_run, train_backbone
from genrecedit.runs.demo import EXPOSURE_KEYS
from genrecedit.runs.evaluate import score_topk

os.environ.setdefault("TQDM_DISABLE", "1")  # quiets the bars that do not set ``disable`` themselves (log noise)
CONFIG_DIR = Path(__file__).parent / "configs"
METRICS = ("recall@10", "ndcg@10")


@dataclass
class BaseSpec:
    """A trained run a benchmark works on; trained from ``config`` + ``train_overrides`` when ``run_dir`` has no
    model yet. ``load_overrides`` apply when it is loaded (e.g. ``decode.k=20``)."""

    run_dir: Path
    config: str
    train_overrides: list[str] = field(default_factory=list)
    load_overrides: list[str] = field(default_factory=list)


def bench_config(size: str) -> dict:
    """bench/configs/<size>.yaml (or a path to a YAML file) -> dict."""
    path = Path(size) if Path(size).suffix in (".yaml", ".yml") else CONFIG_DIR / f"{size}.yaml"
    if not path.exists():
        have = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"benchmark sizing {size!r} not found; have {have}")
    return yaml.safe_load(path.read_text())


def base_spec(section: dict) -> BaseSpec:
    return BaseSpec(Path(section["run_dir"]), section["config"], list(section.get("train_overrides", [])),
                    list(section.get("load_overrides", [])))


def ensure_base(spec: BaseSpec, echo=print) -> LoadedRun:
    """Load ``spec.run_dir``; train it first (resumably) when it holds no model."""
    if not (spec.run_dir / "model" / "model.json").exists() or not (spec.run_dir / "train.json").exists():
        echo(f"training base run {spec.run_dir} ({spec.config} {' '.join(spec.train_overrides)})")
        t0 = time.perf_counter()
        train_backbone(load_config(spec.config, spec.train_overrides), spec.run_dir)
        echo(f"base trained in {time.perf_counter() - t0:.0f} s")
    return load_run(spec.run_dir, spec.load_overrides)


def hardware() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def test_sample(run: LoadedRun, n: int | None, seed: int = 0) -> CaseSet:
    """A seeded sample of ``n`` test cases (all when ``n`` is None or larger)."""
    cases = run.prepared.split.test
    if n is None or n >= len(cases):
        return cases
    return cases.subset(np.sort(np.random.default_rng(seed).choice(len(cases), n, replace=False)))


def evaluate(run: LoadedRun, cases: CaseSet, edits: EditSchedule | None = None,
             groups: dict[str, np.ndarray] | None = None) -> tuple[dict, float]:
    """Constrained beam search on ``cases`` -> {"overall"|"warm"|"cold"|<group>: {R@10, N@10, n_cases}}, seconds.

    groups: extra subsets by target item (name -> item indices), e.g. the items of one edit round.
    """
    out, seconds, _ = evaluate_detailed(run, cases, edits, groups)
    return out, seconds


def evaluate_detailed(run: LoadedRun, cases: CaseSet, edits: EditSchedule | None = None,
                      groups: dict[str, np.ndarray] | None = None,
                      rerank: Callable[[np.ndarray, Beams], Beams] | None = None) -> tuple[dict, float, EvalResult]:
    """``evaluate`` plus the per-case result (for paired bootstrap intervals between two evaluations).

    rerank: applied to the beams before scoring, (histories [n, L], beams [n, k]) -> lists [n, k'] (e.g. a
    calibrated insertion over the new items); its time is counted in the seconds."""
    t0 = time.perf_counter()
    beams = run.recommender.recommend(cases.histories, run.config.decode, edits)
    topk = (beams if rerank is None else rerank(cases.histories, beams)).items.numpy()
    seconds = time.perf_counter() - t0
    result = score_topk(run, topk, cases)
    out = _pick(result, ("overall", "warm", "cold"))
    for name, items in (groups or {}).items():
        mask = np.isin(cases.targets, items)
        if mask.any():
            out[name] = _pick(score_topk(run, topk[mask], cases.subset(mask)), ("overall",))["overall"]
        else:
            out[name] = {m: None for m in METRICS} | {"n_cases": 0}
    return out, seconds, result


def _pick(result: EvalResult, subsets: tuple[str, ...]) -> dict:
    summary = result.summary()
    return {s: {**{m: summary[s].get(m) for m in METRICS}, "n_cases": summary[s]["n_cases"]} for s in subsets}


def warm_drop(base: dict, edited: dict) -> float | None:
    """Relative warm NDCG@10 drop (0.05 = 5 % lower than the base model)."""
    b, e = base["warm"]["ndcg@10"], edited["warm"]["ndcg@10"]
    return None if not b else (b - e) / b


def drop_with_ci(edited: np.ndarray, base: np.ndarray) -> dict:
    """Relative warm N@10 drop of per-case ``edited`` against ``base`` on the same cases, with a paired bootstrap
    95 % interval (0.05 = 5 % below the unedited model)."""
    if len(base) == 0 or not base.mean():
        return {"drop": None, "ci95": [None, None], "n_cases": int(len(base))}
    diff, lo, hi = paired_bootstrap_diff(edited, base)
    scale = -1.0 / base.mean()  # a drop is a negative difference
    return {"drop": diff * scale + 0.0, "ci95": [hi * scale + 0.0, lo * scale + 0.0], "n_cases": int(len(base)),
            "base_ndcg10": float(base.mean()), "edited_ndcg10": float(edited.mean())}


def exposure_fields(topk: np.ndarray, new: np.ndarray, k: int = 10) -> dict:
    """The exposure a benchmark row reports of lists ``topk`` (``EXPOSURE_KEYS``: the new items' share of the top-k
    slots, the largest share of lists one new item enters, the new items in no list)."""
    e = exposure(topk, new, k)
    return {key: e[key] for key in EXPOSURE_KEYS}


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1 else f"{v:,.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def hardware_line(hw: dict) -> str:
    return (f"{hw['cpu']}, {hw['usable_cores']} of {hw['cores']} cores usable, torch {hw['torch']} "
            f"({hw['torch_threads']} threads), load average at start {hw['load_average_at_start']}")


def write_result(out_dir: Path, name: str, data: dict, table: str, title: str) -> None:
    """``<out_dir>/<name>.json`` and ``<name>.md`` (title, hardware, table), both atomic."""
    out_dir = Path(out_dir)
    write_json(out_dir / f"{name}.json", data)
    text = f"## {title}\n\n{table}\n_{hardware_line(data['hardware'])}_\n"
    write_bytes(out_dir / f"{name}.md", text.encode())


def cases_with_items(run: LoadedRun, n: int | None, items: np.ndarray, extra: int | None = None,
                     seed: int = 0, warm: int = 0) -> CaseSet:
    """A seeded sample of ``n`` test cases plus (up to ``extra``, default ``n``) more whose target is one of
    ``items``, so that metrics of a few hundred edited items rest on enough cases, plus up to ``warm`` more warm
    cases, so that a warm drop of a few percent is measurable. Overall metrics of this set are biased towards those
    items; warm metrics are not."""
    split = run.prepared.split
    cases = split.test
    rng = np.random.default_rng(seed)
    base = np.arange(len(cases)) if n is None or n >= len(cases) else rng.choice(len(cases), n, replace=False)
    pool = np.setdiff1d(np.flatnonzero(np.isin(cases.targets, items)), base)
    extra = n if extra is None else extra
    if extra is not None and len(pool) > extra:
        pool = rng.choice(pool, extra, replace=False)
    warm_pool = np.setdiff1d(np.flatnonzero(~split.is_cold(cases)), base)
    more_warm = rng.choice(warm_pool, min(warm, len(warm_pool)), replace=False) if warm > 0 else np.zeros(0, int)
    return cases.subset(np.sort(np.concatenate([base, pool, more_warm]).astype(np.int64)))


def bench_setup(name: str, doc: str | None,
                argv: list[str] | None = None) -> tuple[argparse.Namespace, dict, Path, LoadedRun]:
    """The shared command line of a benchmark script (``--size``, ``--out``, ``-o``) -> (args, its config section,
    output folder, its base run, trained here on first use). ``argv``: the arguments (default: ``sys.argv``), so a
    test can run a benchmark inside the test's process."""
    ap = argparse.ArgumentParser(description=(doc or name).split("\n")[0])
    ap.add_argument("--size", default="smoke", help="bench/configs/<size>.yaml")
    ap.add_argument("--out", type=Path, default=None, help="default runs/bench/<size>")
    ap.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a run-config override applied after the size's load_overrides (e.g. eval.trigger=preserve)")
    args = ap.parse_args(argv)
    cfg = bench_config(args.size)[name]
    spec = base_spec(cfg["base"])
    spec.load_overrides += args.set
    cfg["overrides"] = spec.load_overrides  # what the result was measured with
    return args, cfg, args.out or Path("runs/bench") / args.size, ensure_base(spec)
