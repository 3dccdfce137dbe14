"""The GPU check: train ``game-full`` for a bounded number of minutes, edit it, evaluate 10,000 test cases, and write
one JSON with the timings and metrics — a run of ≤ 8 minutes for a developer with a lent GPU.

    PYTHONPATH=bench python bench/gpu_check.py                    # game-full on cuda, 3 training minutes
    PYTHONPATH=bench python bench/gpu_check.py --smoke            # a tiny ML-100k config on the CPU (≈ 40 s)

Steps, each timed: prepare (load, split, embed, tokenize) and train (``train_backbone``, stopped by
``train.max_minutes``: after the epoch that crosses ``--train-minutes``); the edit of every item absent from training
with the run's default knowledge (game-full: text-only pseudo-histories), C0 computed (a fresh cache), through
``ColdItemEditor`` as the CLI runs it (probe, keys, δ, C0, solve); the base and the edited model on a seeded sample of
``--eval-cases`` test cases. ``edit_per_epoch`` is the edit's update time (docs/method.md §5.9, C0 computed) over the
mean training epoch (its training pass, without validation). Writes ``<out>/gpu_check.json`` and prints it; the run
directory (``<out>/run``) is trained from scratch each time.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from common import evaluate, hardware, test_sample
from genrecedit.atomic import write_json
from genrecedit.config import load_config
from genrecedit.edit.editor import ColdItemEditor
from genrecedit.runs.backbone import load_run, train_backbone
from genrecedit.runs.edit import build_requests, make_editor

NAME = "gpu_check"
# the smoke run: the demo's data and recipe at a size that trains and edits in seconds on one CPU thread
SMOKE = ["model.d_model=32", "model.num_heads=2", "model.encoder_layers=1", "model.decoder_layers=2",
         "model.d_ff=64", "model.decoder_d_ff=256", "train.eval_cases=200", "edit.c0_samples=2000",
         "edit.probe_samples=300", "edit.efficacy_samples=300", "edit.layer_policy=probe", "decode.beam=10",
         "decode.k=10", "threads=1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="the demo config at a tiny size, on the CPU")
    ap.add_argument("--config", default=None, help="run config (default game-full; demo with --smoke)")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    ap.add_argument("--train-minutes", type=float, default=None, help="training budget (default 3; 0.3 with --smoke)")
    ap.add_argument("--eval-cases", type=int, default=None, help="test cases (default 10,000; 500 with --smoke)")
    ap.add_argument("--out", type=Path, default=None, help="default runs/gpu_check (runs/gpu_check-smoke)")
    ap.add_argument("-o", "--set", dest="overrides", action="append", default=[], help="config override")
    args = ap.parse_args()
    smoke = args.smoke
    config = args.config or ("demo" if smoke else "game-full")
    device = args.device or ("cpu" if smoke else "cuda")
    minutes = args.train_minutes if args.train_minutes is not None else (0.3 if smoke else 3.0)
    n_eval = args.eval_cases if args.eval_cases is not None else (500 if smoke else 10_000)
    out_dir = args.out or Path("runs/gpu_check-smoke" if smoke else "runs/gpu_check")
    run_dir = out_dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # timings of a fresh run, never a resumed one
    overrides = [*(SMOKE if smoke else []), f"device={device}", f"train.max_minutes={minutes}", *args.overrides]
    started = time.perf_counter()

    cfg = load_config(config, overrides)
    prepared, trained = train_backbone(cfg, run_dir)
    train_wall = time.perf_counter() - started
    epoch_s = [h["train_seconds"] for h in trained.history]
    print(f"[{NAME}] trained {trained.epochs_run} epochs in {train_wall:.0f} s (epoch {np.mean(epoch_s):.1f} s)",
          flush=True)

    run = load_run(run_dir)
    requests = build_requests(run)
    # C0 cached in the run's own folder: computed here, as for any new base model
    cfg_edit = make_editor(run).cfg
    editor = ColdItemEditor(run.recommender, run.prepared.split.train, run.base_hash, cfg_edit, run_dir / "c0",
                            run.config.eval.trigger)
    t0 = time.perf_counter()
    memory = editor.memorize(requests, run.prepared.codes)
    artifact, report = editor.solve(memory, run.prepared.codes, run.prepared.split.item_ids)
    edit_call = time.perf_counter() - t0
    schedule = artifact.schedule(run.config.eval.trigger, run.recommender.device)
    print(f"[{NAME}] edit: {report.n_requests} requests, update {report.timings_s['update_total']:.1f} s", flush=True)

    cases = test_sample(run, n_eval, seed=0)
    base, base_s = evaluate(run, cases)
    edited, edited_s = evaluate(run, cases, schedule)
    timings = report.timings_s
    out = {
        "config": config, "overrides": overrides, "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "hardware": hardware(),
        "timings_s": {
            "total": time.perf_counter() - started,
            "prepare": prepared.timings_s,
            "train_wall": train_wall, "train_seconds": trained.train_seconds,
            "train_epoch": float(np.mean(epoch_s)), "train_epochs": epoch_s,
            "probe": timings["probe"], "keys": timings["keys"], "delta": timings["delta"], "c0": timings["c0"],
            "solve": timings["solve"], "edit_total": timings["update_total"], "edit_call": edit_call,
            "eval_base": base_s, "eval_edited": edited_s,
        },
        "edit_per_epoch": timings["update_total"] / float(np.mean(epoch_s)),
        "train": {"epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
                  "best_valid_ndcg@10": trained.best_valid_ndcg10},
        "edit": {"n_requests": report.n_requests, "n_items": report.n_items, "layers": report.layers,
                 "converged": report.converged, "efficacy": report.efficacy, "c0_cached": report.c0_cached,
                 "chunk_size": editor.chunk_size},
        "eval_cases": len(cases),
        "metrics": {"base": base, "edited": edited},
    }
    write_json(out_dir / f"{NAME}.json", out)
    t = out["timings_s"]
    print(f"[{NAME}] total {t['total']:.0f} s: train {t['train_wall']:.0f} s ({trained.epochs_run} epochs, "
          f"{t['train_epoch']:.1f} s each), edit {t['edit_total']:.1f} s (probe {t['probe']:.1f}, keys "
          f"{t['keys']:.1f}, δ {t['delta']:.1f}, C0 {t['c0']:.1f}, solve {t['solve']:.1f}; "
          f"{out['edit_per_epoch']:.2f} epochs), eval {base_s:.0f} + {edited_s:.0f} s on {len(cases)} cases; "
          f"overall N@10 {base['overall']['ndcg@10']:.4f} → {edited['overall']['ndcg@10']:.4f}, cold R@10 "
          f"{base['cold']['recall@10']} → {edited['cold']['recall@10']}. Wrote {out_dir / (NAME + '.json')}")


if __name__ == "__main__":
    main()
