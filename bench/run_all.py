"""Every benchmark at one size, one after another on this machine (what ``make bench`` / ``make bench-smoke``
run); then ``<out>/SUMMARY.md`` gathers their tables.

    python bench/run_all.py --size smoke          # ≤ 10 min on 2 cores from a fresh clone
    python bench/run_all.py --size full           # the game recipe, ≤ 2 h on 2 cores (base runs trained if missing)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from genrecedit.atomic import write_bytes

BENCH_DIR = Path(__file__).parent
# cheap first, so that a cut-short full run still leaves the serving and update-cost tables
BENCHMARKS = ("serving", "update_cost", "scale", "sequential", "profile_hot_paths")
TABLES = {"serving": "serving.md", "update_cost": "update_cost.md", "scale": "scale.md",
          "sequential": "sequential.md", "profile_hot_paths": "profile/profile.md"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="smoke")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", default=",".join(BENCHMARKS))
    args = ap.parse_args()
    out_dir = args.out or Path("runs/bench") / args.size
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))}
    failed, timings = [], {}
    for name in BENCHMARKS:
        if name not in args.only.split(","):
            continue
        extra = ["--out", str(out_dir / "profile")] if name == "profile_hot_paths" else ["--out", str(out_dir)]
        print(f"== {name} ({args.size})", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), "--size", args.size, *extra],
                            env=env).returncode
        timings[name] = time.perf_counter() - t0
        print(f"== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {timings[name]:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    parts = [f"# Benchmarks ({args.size})\n"]
    for name in BENCHMARKS:
        table = out_dir / TABLES[name]
        if table.exists():
            text = table.read_text()
            if name == "profile_hot_paths":  # the op-level details stay in profile.md
                text = text.split("\n### ")[0]
            parts.append(text)
    parts.append("Wall time per benchmark: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
                 + f"; in all {sum(timings.values()) / 60:.0f} min\n")
    write_bytes(out_dir / "SUMMARY.md", "\n".join(parts).encode())
    print(f"written {out_dir / 'SUMMARY.md'}")
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
