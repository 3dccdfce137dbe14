"""δ optimisation (docs/method.md §5.4, ``edit/memory.py``) as it is in the working tree against ``edit/memory.py`` at
a git ref, side by side in one process on the same teacher-forced chunks of a trained run's edit requests: wall
time, and how far the two versions' δ and converged requests are apart.

    PYTHONPATH=bench python bench/delta_speed.py --run runs/game --before-ref <commit> [--stop-prob 0,0.9]

The requests are the run's default knowledge (``build_requests``), cut into the editor's length chunks
(``edit.chunk_size``) and teacher-forced once before timing; every edited position (``edit.positions``) is
optimised at l_p = p, as the editor does when the probe resolves no other layer. For each ``--stop-prob`` the two
versions run ``--repeats`` times, alternating, on ``--threads`` threads; the median is reported. The working tree's
version runs with its default ``check_every`` for the device and with 10 (the accelerator's default: the host
looks at the rows still going every 10 steps). Writes
``<out>/delta_speed.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common import hardware, md_table, write_result
from genrecedit.edit.keys import teacher_force
from genrecedit.edit.memory import optimise_deltas
from genrecedit.model.tokens import length_batches
from genrecedit.runs.backbone import load_run
from genrecedit.runs.edit import build_requests, make_editor

NAME = "delta_speed"


def memory_at(ref: str) -> Callable:
    """``optimise_deltas`` from ``src/genrecedit/edit/memory.py`` at git ``ref``."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(["git", "-C", str(root), "show", f"{ref}:src/genrecedit/edit/memory.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-before-")) / "_before_memory.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("_before_memory", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_before_memory"] = module
    spec.loader.exec_module(module)
    return module.optimise_deltas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/game"))
    ap.add_argument("--before-ref", required=True, help="git ref of edit/memory.py to time against")
    ap.add_argument("--stop-prob", default="0,0.9", help="comma-separated edit.delta.stop_prob values")
    ap.add_argument("--requests", type=int, default=None, help="a seeded sample of this many requests (default all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/delta_speed"))
    args = ap.parse_args()
    run = load_run(args.run)
    torch.set_num_threads(args.threads)  # after load_run, which applies the run's own thread count
    hw = hardware()
    dec, layout, codes = run.recommender.decoder, run.recommender.layout, run.prepared.codes
    requests = build_requests(run)
    if args.requests is not None and args.requests < len(requests):
        requests = requests.subset(np.sort(np.random.default_rng(0).choice(len(requests), args.requests, False)))
    positions = run.config.edit.positions or list(range(layout.n_positions))
    sites = [(min(p, dec.n_layers - 1), p) for p in positions]
    targets = torch.from_numpy(codes[requests.items])
    chunk_size = make_editor(run).chunk_size
    chunks = length_batches(requests.histories, chunk_size)
    forced = [teacher_force(dec, layout, requests.histories[rows], codes[requests.items[rows]], codes)
              for rows in chunks]
    before = memory_at(args.before_ref)
    base_cfg = run.config.edit.delta

    def variant(fn: Callable, cfg) -> Callable[[], list]:
        def go() -> list:
            return [fn(dec, layout, tf, p, layer, targets[rows, p], tf.values[p][layer].detach(), cfg)
                    for rows, tf in zip(chunks, forced) for layer, p in sites]
        return go

    results, rows_md = {}, []
    for stop_prob in [float(s) for s in args.stop_prob.split(",")]:
        cfg = dataclasses.replace(base_cfg, stop_prob=stop_prob)
        variants = {"before": variant(before, cfg), "after": variant(optimise_deltas, cfg),
                    "after, check_every 10": variant(optimise_deltas, dataclasses.replace(cfg, check_every=10))}
        secs: dict[str, list[float]] = {v: [] for v in variants}
        out = {v: fn() for v, fn in variants.items()}  # warm-up, and the results compared below
        for _ in range(args.repeats):  # alternating, so load changes hit every version alike
            for v, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                secs[v].append(time.perf_counter() - t0)
        ref = out["before"]
        entry = {}
        for v in variants:
            d_ref = torch.cat([r.delta for r in ref])
            d = torch.cat([r.delta for r in out[v]])
            conv_ref, conv = torch.cat([r.converged for r in ref]), torch.cat([r.converged for r in out[v]])
            entry[v] = {"median_s": float(np.median(secs[v])), "all_s": secs[v],
                        "converged": int(conv.sum()), "converged_differ": int((conv != conv_ref).sum()),
                        "max_abs_delta_diff": float((d - d_ref).abs().max()),
                        "max_abs_delta": float(d_ref.abs().max())}
            rows_md.append([stop_prob, v, entry[v]["median_s"], entry["before"]["median_s"] / entry[v]["median_s"],
                            f"{entry[v]['converged']} / {len(conv)}", entry[v]["converged_differ"],
                            f"{entry[v]['max_abs_delta_diff']:.2e}"])
            print(f"[{NAME}] stop_prob {stop_prob} {v}: {entry[v]['median_s']:.3f} s, converged "
                  f"{entry[v]['converged']}, differ {entry[v]['converged_differ']}, "
                  f"max |Δδ| {entry[v]['max_abs_delta_diff']:.2e}", flush=True)
        results[str(stop_prob)] = entry
    table = md_table(["stop_prob", "version", "median s", "speed-up ×", "converged", "converged differ",
                      "max |δ − δ_before|"], rows_md)
    table += (f"\n{len(requests)} requests of {args.run} in {len(chunks)} chunks of ≤ {chunk_size}, "
              f"sites {sites}, lr {base_cfg.lr}, {base_cfg.steps} steps, {args.threads} torch thread(s), median of "
              f"{args.repeats} (alternating); before: edit/memory.py at {args.before_ref}.\n")
    write_result(args.out, NAME, {"run": str(args.run), "before_ref": args.before_ref, "hardware": hw,
                                  "threads": args.threads, "n_requests": len(requests), "sites": sites,
                                  "results": results}, table, "δ optimisation, before vs working tree")
    print(table)


if __name__ == "__main__":
    main()
