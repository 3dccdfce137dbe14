"""Profile the hot paths: key extraction (``edit/keys.py`` teacher forcing), δ optimisation (``edit/memory.py``)
and constrained beam search (``model/beam.py`` + ``model/decoder.py``), as the editor and the recommender call
them. Wall time (median of repeats) per path, and for each the top torch ops (``torch.profiler``) and the top
Python functions by own time (``cProfile``).

    python bench/profile_hot_paths.py --size smoke --before-ref HEAD

``--before-ref REF`` also loads ``model/decoder.py`` and ``model/beam.py`` as they are at git REF and times both
versions on the same model, data and process, interleaved, so that a speed-up is measured side by side (the edit
paths take the decoder as an argument, so they run on either version unchanged). ``--before-input-order`` makes
the before version cut its batches in input order, as the editor and ``Recommender.recommend`` did before they
batched requests by history length (``model.tokens.length_order``).
"""
from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from common import base_spec, bench_config, ensure_base, hardware, md_table, test_sample, write_result
from genrecedit.edit.keys import teacher_force
from genrecedit.edit.memory import optimise_deltas
from genrecedit.model.beam import beam_search
from genrecedit.model.tokens import length_order
from genrecedit.runs.edit import build_requests, make_editor

NAME = "profile"


def modules_at(ref: str) -> tuple[type, Callable]:
    """(SteppedDecoder, beam_search) from ``src/genrecedit/model/{decoder,beam}.py`` at git ``ref``."""
    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="bench-before-"))
    loaded = {}
    for name in ("decoder", "beam"):
        text = subprocess.run(["git", "-C", str(root), "show", f"{ref}:src/genrecedit/model/{name}.py"],
                              check=True, capture_output=True, text=True).stdout
        text = text.replace("from genrecedit.model.decoder import", "from _before_decoder import")
        (tmp / f"_before_{name}.py").write_text(text)
        spec = importlib.util.spec_from_file_location(f"_before_{name}", tmp / f"_before_{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"_before_{name}"] = module
        spec.loader.exec_module(module)
        loaded[name] = module
    return loaded["decoder"].SteppedDecoder, loaded["beam"].beam_search


def batch_order(histories: np.ndarray, ordered: bool) -> np.ndarray:
    """The order batches are cut in: by history length (what the product does) or input order (before)."""
    return length_order(histories) if ordered else np.arange(len(histories))


def recommend(decoder, search: Callable, run, histories: np.ndarray, beam: int, k: int, batch_size: int,
              ordered: bool = True) -> None:
    """What ``Recommender.recommend`` does, with a given decoder and beam search implementation."""
    rec = run.recommender
    order = batch_order(histories, ordered)
    for start in range(0, len(histories), batch_size):
        ids, mask = rec.layout.encoder_inputs(histories[order[start : start + batch_size]], rec.codes)
        search(decoder, rec.layout, rec.trie, ids, mask, beam, k, True, None)


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def op_table(fn: Callable[[], object], rows: int = 12) -> str:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def python_table(fn: Callable[[], object], rows: int = 15) -> str:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(rows)
    text = buf.getvalue()
    return text[text.find("   ncalls"):] if "   ncalls" in text else text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="smoke")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before-ref", default=None, help="git ref of model/{decoder,beam}.py to time side by side")
    ap.add_argument("--details-before", action="store_true", help="op/function tables for the before version too")
    ap.add_argument("--before-input-order", action="store_true",
                    help="the before version cuts batches in input order (not by history length)")
    args = ap.parse_args()
    cfg = bench_config(args.size)[NAME]
    out_dir = args.out or Path("runs/bench") / args.size / "profile"
    run = ensure_base(base_spec(cfg["base"]))
    torch.set_num_threads(args.threads)
    hw = hardware()
    codes, dec, layout = run.prepared.codes, run.recommender.decoder, run.recommender.layout
    requests = build_requests(run)
    requests = requests.subset(np.sort(np.random.default_rng(0).choice(len(requests), min(cfg["requests"],
                                                                                          len(requests)), False)))
    report = run.run_dir / "edit_report.json"
    layers = (json.loads(report.read_text())["layers"] if report.exists()
              else [min(p, dec.n_layers - 1) for p in range(layout.n_positions)])
    targets = torch.from_numpy(codes[requests.items])
    hist = test_sample(run, cfg["beam_requests"], seed=2).histories
    beam, k = run.config.decode.beam, 10
    chunk = make_editor(run).chunk_size
    variants = {"after": (dec, beam_search, True)}
    if args.before_ref:
        old_decoder, old_search = modules_at(args.before_ref)
        variants = {"before": (old_decoder(run.recommender.model, layout.n_positions), old_search,
                               not args.before_input_order), **variants}

    def paths(decoder, search, ordered) -> dict[str, Callable[[], object]]:
        """The editor's chunks (``edit.chunk_size``) for keys and δ; batches of 256 for beam search."""
        order = batch_order(requests.histories, ordered)
        chunks = [order[start : start + chunk] for start in range(0, len(order), chunk)]
        forced = [teacher_force(decoder, layout, requests.histories[rows], codes[requests.items[rows]], codes)
                  for rows in chunks]

        def keys():
            for rows in chunks:
                teacher_force(decoder, layout, requests.histories[rows], codes[requests.items[rows]], codes)

        def deltas():
            for rows, tf in zip(chunks, forced):
                for p, layer in enumerate(layers):
                    optimise_deltas(decoder, layout, tf, p, layer, targets[rows, p], tf.values[p][layer].detach(),
                                    run.config.edit.delta)

        def beam_batch():
            recommend(decoder, search, run, hist, beam, k, 256, ordered)

        def beam_single():
            recommend(decoder, search, run, hist[:32], beam, k, 1, ordered)

        return {"keys (teacher forcing)": keys, "δ optimisation (all positions)": deltas,
                f"beam search, batch 256 ({len(hist)} requests)": beam_batch,
                "beam search, 32 single requests": beam_single}

    results: dict[str, dict] = {v: {} for v in variants}
    fns = {v: paths(*impl) for v, impl in variants.items()}
    for name in fns["after"]:
        for v in variants:
            fns[v][name]()  # warm-up
        secs = {v: [] for v in variants}
        for _ in range(args.repeats):  # interleaved, so load changes hit both versions alike
            for v in variants:
                secs[v] += timed(fns[v][name], 1)
        for v in variants:
            results[v][name] = {"median_s": float(np.median(secs[v])), "all_s": secs[v]}
            if v == "after" or args.details_before:
                results[v][name].update(ops=op_table(fns[v][name]), python=python_table(fns[v][name]))
        print(f"[{NAME}] {name}: " + ", ".join(f"{v} {np.median(secs[v]):.3f} s" for v in variants), flush=True)
    if "before" in results:
        rows = [[name, results["before"][name]["median_s"], r["median_s"], results["before"][name]["median_s"] /
                 r["median_s"]] for name, r in results["after"].items()]
        table = md_table(["path", f"before ({args.before_ref}) s", "after (working tree) s", "speed-up ×"], rows)
    else:
        table = md_table(["path", "median s"], [[name, r["median_s"]] for name, r in results["after"].items()])
    table += (f"\n{len(requests)} edit requests in chunks of {chunk} (layers {layers}, "
              f"{run.config.edit.delta.steps} δ steps), beam {beam}, top-{k}, {args.threads} torch thread(s), "
              f"median of {args.repeats} (interleaved)"
              f"{'; before: batches in input order, after: by history length' if args.before_input_order else ''}.\n")
    details = "\n".join(f"### {name} ({v})\n\n```\n{r['ops']}\n{r['python']}\n```\n"
                        for v in results for name, r in results[v].items() if "ops" in r)
    write_result(out_dir, NAME, {"size": args.size, "config": cfg, "hardware": hw, "threads": args.threads,
                                 "layers": layers, "n_requests": len(requests), "before_ref": args.before_ref,
                                 "before_input_order": args.before_input_order,
                                 "results": results}, table + "\n" + details, f"Hot paths ({args.size})")
    print(table)


if __name__ == "__main__":
    main()
