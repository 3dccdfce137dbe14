"""How long the text-only cold start's selection takes (``select_coldstart``: the validation pass of
``genrecedit coldstart``), the working tree against the code at a git ref, side by side on the same run in one
invocation. Each version runs in a subprocess of its own (the ref's from a temporary ``git worktree``), interleaved
A B A B …, with the same torch threads; the versions' choices (the prior, the fitted insertion, the baselines'
settings) must agree, so a speed-up changes nothing it selects.

    PYTHONPATH=bench python bench/coldstart_selection.py --run runs/demo --before-ref HEAD~1 [--repeats 2]

Writes ``<out>/coldstart_selection.json`` and ``.md``: per version the wall seconds of each repeat (selection only:
imports and loading the run are not timed), their median and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import hardware, md_table, write_result

NAME = "coldstart_selection"
ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, time
from pathlib import Path
from genrecedit.runs.backbone import load_run
from genrecedit.runs.coldstart import ColdstartSpec, select_coldstart
run = load_run(Path(sys.argv[1]), [f"threads={sys.argv[2]}"])
t0 = time.perf_counter()
sel = select_coldstart(run, ColdstartSpec(), progress=False)
seconds = time.perf_counter() - t0
ins = sel["insertion"] or {}
print(json.dumps({"seconds": seconds, "n_cases": sel["n_cases"], "prior": sel["chosen"],
                  "insertion": ins.get("chosen"), "rule": (ins.get("rule_check") or {}).get("chosen"),
                  "baselines": {k: v["chosen"] for k, v in sel["baselines"].items()}}))
"""


def run_version(src: Path, run_dir: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), str(threads)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_choice(a: dict, b: dict) -> bool:
    """The same settings chosen; fitted coefficients equal to 1e-9 (summation order may differ)."""
    def close(x, y) -> bool:
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(close(u, v) for u, v in zip(x, y))
        if isinstance(x, float) and isinstance(y, float):
            return abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y))
        return x == y

    return all(close(a[k], b[k]) for k in ("n_cases", "prior", "insertion", "rule", "baselines"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained run directory")
    ap.add_argument("--before-ref", required=True, help="git ref of the version to compare with")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    run_dir = args.run.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before_ref],
                       check=True, capture_output=True)
        try:
            versions = {"before": tree / "src", "after": ROOT / "src"}
            runs: dict[str, list[dict]] = {k: [] for k in versions}
            for i in range(args.repeats):
                for name, src in versions.items():
                    runs[name].append(run_version(src, run_dir, args.threads))
                    print(f"repeat {i + 1} {name}: {runs[name][-1]['seconds']:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    seconds = {k: [r["seconds"] for r in v] for k, v in runs.items()}
    median = {k: float(np.median(v)) for k, v in seconds.items()}
    agree = all(same_choice(runs["before"][0], r) for v in runs.values() for r in v)
    data = {"run": str(args.run), "before_ref": args.before_ref, "threads": args.threads, "seconds": seconds,
            "median_s": median, "speedup": median["before"] / median["after"], "same_choice": agree,
            "n_cases": runs["after"][0]["n_cases"], "hardware": hardware()}
    rows = [[f"{k} ({args.before_ref if k == 'before' else 'working tree'})", median[k],
             ", ".join(f"{s:.1f}" for s in seconds[k])] for k in versions]
    table = md_table(["version", "median s", "each repeat s"], rows)
    table += (f"\nSpeed-up {data['speedup']:.2f}× on {data['n_cases']:,} validation cases ({args.run}); "
              f"the same choices: {agree}.\n")
    write_result(args.out, NAME, data, table, "Text-only selection time, side by side")
    print(table)
    if not agree:
        sys.exit("the two versions chose differently")


if __name__ == "__main__":
    main()
