"""Serving latency in-process: the run's whole catalog, N edited items active (the service's trigger mode), constrained
beam search; p50/p99 latency of single requests and throughput of batches, base vs edited (and vs edited under
``preserve`` scoring when the service fires another mode), per torch thread
setting. (``bench/serve_load.py`` is the HTTP load test of the live service.)

    python bench/serving.py --size full --out runs/bench/full
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from common import bench_setup, hardware, md_table, test_sample, write_result
from genrecedit.edit.artifact import EditArtifact
from genrecedit.model.recommender import DecodeConfig
from genrecedit.runs.edit import build_requests, make_editor
from genrecedit.serving.service import ServiceConfig

NAME = "serving"


def latencies_ms(recommend, histories: np.ndarray, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """([n] wall, [n] process-CPU) milliseconds of one ``recommend`` call per single history (after ``warmup``
    untimed calls). On a shared machine the CPU time (1 thread) is what the call would take on an idle core."""
    for h in histories[:warmup]:
        recommend(h[None])
    wall, cpu = [], []
    for h in histories[warmup:]:
        t0, c0 = time.perf_counter(), time.process_time()
        recommend(h[None])
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return np.asarray(wall), np.asarray(cpu)


def edited_artifact(run, items: np.ndarray, path: Path) -> tuple[EditArtifact, float]:
    """The edit of ``items``, reused from ``path`` when it holds exactly that edit of this base model."""
    if (path / "edits.json").exists():
        artifact = EditArtifact.load(path)
        ids = [run.prepared.split.item_ids[i] for i in items]
        if artifact.base_hash == run.base_hash and sorted(artifact.item_ids()) == sorted(ids):
            return artifact, float(json.loads((path / "edits.json").read_text())["batches"][0]["meta"]["timings_s"][
                "update_total"])
    split = run.prepared.split
    artifact, report = make_editor(run).edit(build_requests(run, items), run.prepared.codes, split.item_ids)
    artifact.save(path)
    return artifact, report.timings_s["update_total"]


def share_of(rec, histories: np.ndarray, dc: DecodeConfig, sched, items: np.ndarray) -> float:
    """Share of top-k slots that hold one of ``items`` (shows that the edits are active)."""
    return float(np.isin(rec.recommend(histories, dc, sched).items.numpy(), items).mean())


def measure_variant(rec, histories: np.ndarray, cfg: dict, sched, n_single: int) -> dict:
    """Single-request latency percentiles (wall and CPU) and batch throughput for one model variant."""
    single = DecodeConfig(beam=int(cfg["beam"]), k=int(cfg["k"]), batch_size=1)
    lat, cpu = latencies_ms(lambda h: rec.recommend(h, single, sched), histories[:n_single], int(cfg["warmup"]))
    res = {"p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
           "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
           "cpu_p50_ms": float(np.percentile(cpu, 50)), "cpu_p99_ms": float(np.percentile(cpu, 99)), "n": len(lat),
           "batches": {}}
    for bs in cfg["batch_sizes"]:
        dc = DecodeConfig(beam=int(cfg["beam"]), k=int(cfg["k"]), batch_size=int(bs))
        hist = histories[:bs]
        rec.recommend(hist, dc, sched)  # warm-up
        times, cpus = [], []
        for _ in range(int(cfg["batch_repeats"])):
            t0, c0 = time.perf_counter(), time.process_time()
            rec.recommend(hist, dc, sched)
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        wall, cpu_s = float(np.median(times)), float(np.median(cpus))
        res["batches"][int(bs)] = {"median_s": wall, "requests_per_s": bs / wall, "cpu_s": cpu_s,
                                   "requests_per_cpu_s": bs / cpu_s}
    return res


def main() -> None:
    args, cfg, out_dir, run = bench_setup(NAME, __doc__)
    split = run.prepared.split
    cold = split.cold_items()
    items = np.sort(np.random.default_rng(0).choice(cold, min(cfg["edited_items"], len(cold)), replace=False))
    artifact, edit_s = edited_artifact(run, items, out_dir / "serving_edits")
    trigger = ServiceConfig().trigger or run.config.eval.trigger  # what the service fires (the run's by default)
    variants = [("base", None), ("edited", artifact.schedule(trigger, run.recommender.device))]
    if trigger != "preserve":  # what keeping every other item's score costs, side by side
        variants.append(("edited, preserve", artifact.schedule("preserve", run.recommender.device)))
    thread_counts = cfg["threads"] if isinstance(cfg["threads"], list) else [cfg["threads"]]
    n_single = int(cfg["single_requests"]) + int(cfg["warmup"])
    cases = test_sample(run, max(n_single, max(cfg["batch_sizes"])), seed=1)
    rec = run.recommender
    single = DecodeConfig(beam=int(cfg["beam"]), k=int(cfg["k"]), batch_size=1)
    results: dict = {}
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(int(threads))  # after loading: the run's config may set its own thread count
        hw = hardware()
        for variant, sched in variants:
            res = measure_variant(rec, cases.histories, cfg, sched, n_single)
            res["edited_share_of_top_k"] = share_of(rec, cases.histories[: max(cfg["batch_sizes"])], single, sched,
                                                    items)
            results[f"{variant}, {threads} thread(s)"] = {"threads": int(threads), **res}
            rows.append([variant, threads, "1", res["p50_ms"], res["p99_ms"], res["cpu_p50_ms"], res["cpu_p99_ms"],
                         1000 / res["mean_ms"]])
            rows += [[variant, threads, str(bs), None, None, None, None, b["requests_per_s"]]
                     for bs, b in res["batches"].items()]
    table = md_table(["model", "threads", "batch", "p50 ms", "p99 ms", "CPU p50 ms", "CPU p99 ms", "requests/s"],
                     rows)
    table += (f"\nCatalog {split.n_items:,} items ({len(items):,} edited, active under {trigger} triggering; edit took "
              f"{edit_s:.0f} s), beam {cfg['beam']}, top-{cfg['k']}, constrained; single-request latency over "
              f"{n_single - int(cfg['warmup'])} test histories (wall, and process CPU time per call). Goals: "
              f"p50 ≤ 50 ms (goal 15 ms), p99 ≤ 50 ms.\n")
    write_result(out_dir, NAME, {"size": args.size, "config": cfg, "hardware": hw, "catalog_items": split.n_items,
                                 "edited_items": len(items), "edit_seconds": edit_s, "results": results},
                 table, f"Serving latency ({args.size})")
    print(table)


if __name__ == "__main__":
    main()
