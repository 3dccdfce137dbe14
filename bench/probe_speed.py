"""The layer probe (docs/method.md §5.3) in scikit-learn against torch, side by side in one process on the same keys:
wall time per SID position and in all, their ratio, and how far the two backends' accuracies are apart.

    PYTHONPATH=bench python bench/probe_speed.py                      # synthetic keys shaped like game's probe
    PYTHONPATH=bench python bench/probe_speed.py --run runs/game      # the probe keys of a trained run

Synthetic keys: ``positions`` × decoder layers × 2 × ``samples`` keys of ``decoder_d_ff`` dims (the sizes read from
``src/genrecedit/configs/game.yaml`` and the edit defaults: 4 positions × 4 layers × 2,000 + 2,000 keys of 1,024
dims), ReLU'd Gaussians whose request keys are shifted on a few dimensions by a layer-dependent amount. With
``--run`` the keys are those ``ColdItemEditor.probe`` collects (its requests, negatives and groups), gathered once
before timing. Each backend runs ``--repeats`` times on ``--threads`` threads, alternating; the median is reported.
Each pass over the positions computes the grouped folds once, as an edit does; a third pass, "sklearn, folds per
position", computes them for every position, as the probe did before they were memoised (``probe.grouped_folds``).
Writes ``<out>/probe_speed.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from common import hardware, md_table, write_result
from genrecedit.edit.probe import ProbeTable, fixed_layers, grouped_folds, probe_folds

NAME = "probe_speed"
GAME = Path(__file__).resolve().parents[1] / "src/genrecedit/configs/game.yaml"


def synthetic_keys(n_pos: int, n_layers: int, samples: int, d_ff: int, seed: int = 0):
    """{p: ([L, m, d] request keys, [L, n, d] training keys)} and the two group arrays (400 edited items, 2,000
    training targets)."""
    rng = np.random.default_rng(seed)
    keys = {}
    for p in range(n_pos):
        shift = rng.uniform(0.0, 0.4, n_layers)
        pos = rng.standard_normal((n_layers, samples, d_ff), dtype=np.float32)
        pos[:, :, :32] += shift[:, None, None].astype(np.float32)
        neg = rng.standard_normal((n_layers, samples, d_ff), dtype=np.float32)
        keys[p] = (torch.from_numpy(np.maximum(pos, 0)), torch.from_numpy(np.maximum(neg, 0)))
    return keys, rng.integers(0, 400, samples), rng.integers(0, 2000, samples)


def run_keys(run_dir: Path):
    """The probe's keys of a trained run, as ``ColdItemEditor.probe`` gathers them."""
    from genrecedit.edit.keys import collect_keys
    from genrecedit.edit.probe import negative_samples
    from genrecedit.runs.backbone import load_run
    from genrecedit.runs.edit import build_requests, make_editor

    run = load_run(run_dir)
    editor, requests, codes = make_editor(run), build_requests(run), run.prepared.codes
    rng = np.random.default_rng(editor.cfg.seed)
    req = requests.subset(np.sort(rng.choice(len(requests), min(len(requests), editor.cfg.probe_samples),
                                             replace=False)))
    neg = negative_samples(len(editor.train), requests, editor.cfg.probe_samples, rng)
    sites = [(layer, p) for layer in range(editor.n_layers) for p in range(editor.n_pos)]
    pk = collect_keys(editor.decoder, editor.layout, req.histories, codes[req.items], codes, sites)
    nk = collect_keys(editor.decoder, editor.layout, editor.train.histories[neg],
                      codes[editor.train.targets[neg]], codes, sites)
    layers = range(editor.n_layers)
    keys = {p: (torch.stack([pk[(la, p)] for la in layers]), torch.stack([nk[(la, p)] for la in layers]))
            for p in range(editor.n_pos)}
    return keys, req.items, editor.train.targets[neg]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="a trained run whose probe keys to use")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2000, help="synthetic keys per class (edit.probe_samples)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/probe"))
    args = ap.parse_args()
    if args.run is not None:
        keys, pos_groups, neg_groups = run_keys(args.run)
        source = str(args.run)
    else:
        game = yaml.safe_load(GAME.read_text())
        keys, pos_groups, neg_groups = synthetic_keys(4, game["model"]["decoder_layers"], args.samples,
                                                      game["model"]["decoder_d_ff"])
        source = "synthetic (game.yaml sizes)"
    torch.set_num_threads(args.threads)  # after load_run, which applies the run's own thread setting
    n_pos = len(keys)
    n_layers, _, d_ff = keys[0][0].shape
    print(f"keys: {source}; {n_pos} positions x {n_layers} layers x {keys[0][0].shape[1]} + {keys[0][1].shape[1]} "
          f"keys of {d_ff} dims; {args.folds} folds; {args.threads} thread(s)")
    # "sklearn, folds per position": scikit-learn with the grouped folds computed again for every position, as the
    # probe did before they were memoised (the reference the "3x" is against); the other two compute them
    # once per pass over the positions, as one edit does
    variants = {"sklearn, folds per position": "sklearn", "sklearn": "sklearn", "torch": "torch"}
    seconds = {v: np.zeros((args.repeats, n_pos)) for v in variants}
    folds = {}
    for rep in range(args.repeats):
        for variant, backend in variants.items():
            grouped_folds.cache_clear()
            for p in range(n_pos):
                if variant == "sklearn, folds per position":
                    grouped_folds.cache_clear()
                t0 = time.perf_counter()
                acc = probe_folds(*keys[p], pos_groups, neg_groups, 0, args.folds, backend)
                seconds[variant][rep, p] = time.perf_counter() - t0
                folds.setdefault(backend, {})[p] = acc
    median = {b: np.median(s, axis=0) for b, s in seconds.items()}
    tables = {b: ProbeTable.from_folds(np.stack([folds[b][p] for p in range(n_pos)])) for b in folds}
    default = fixed_layers(n_pos, n_layers)
    diff = np.abs(tables["torch"].accuracy - tables["sklearn"].accuracy)
    ref = "sklearn, folds per position"
    rows = [[f"position {p}", float(median[ref][p]), float(median["sklearn"][p]), float(median["torch"][p]),
             float(median["sklearn"][p] / median["torch"][p]), float(median[ref][p] / median["torch"][p]),
             float(diff[p].max())] for p in range(n_pos)]
    total = {b: float(m.sum()) for b, m in median.items()}
    rows.append(["all", total[ref], total["sklearn"], total["torch"], total["sklearn"] / total["torch"],
                 total[ref] / total["torch"], float(diff.max())])
    table = md_table(["", "sklearn, folds per position s", "sklearn s", "torch s", "ratio", "ratio to folds per position",
                      "max |Δ accuracy|"], rows)
    for b, t in tables.items():
        table += (f"\n{b}: argmax layers {t.best_layers()}, chosen layers (α 0.05) {t.best_layers(default, 0.05)}, "
                  f"accuracy {t.accuracy.round(4).tolist()}")
    print(table)
    print(f"probe: sklearn (folds per position) {total[ref]:.2f} s, sklearn {total['sklearn']:.2f} s, torch "
          f"{total['torch']:.2f} s: torch {total['sklearn'] / total['torch']:.2f}x faster than sklearn, "
          f"{total[ref] / total['torch']:.2f}x than sklearn with folds per position")
    data = {"source": source, "shape": {"positions": n_pos, "layers": n_layers, "d_ff": d_ff,
                                        "keys_per_class": keys[0][0].shape[1], "folds": args.folds},
            "threads": args.threads, "repeats": args.repeats,
            "seconds_median": {b: m.tolist() for b, m in median.items()}, "total_s": total,
            "ratio": total["sklearn"] / total["torch"], "ratio_to_folds_per_position": total[ref] / total["torch"],
            "max_abs_accuracy_diff": float(diff.max()),
            "accuracy": {b: t.accuracy.tolist() for b, t in tables.items()},
            "best_layers": {b: t.best_layers(default, 0.05) for b, t in tables.items()},
            "hardware": hardware()}
    write_result(args.out, NAME, data, table, "Layer probe: scikit-learn vs torch, same keys, one process")


if __name__ == "__main__":
    main()
