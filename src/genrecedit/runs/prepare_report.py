"""``genrecedit prepare``: data → split → embeddings → SIDs, with the split summary, SID stats and step timings."""
from __future__ import annotations

import json
from pathlib import Path

from genrecedit.config import RunConfig
from genrecedit.data.protocols import format_split_summary, save_split_summary, split_summary
from genrecedit.runs.prepare import configure_runtime, prepare
from genrecedit.atomic import write_json


def prepare_report(cfg: RunConfig, run_dir: Path) -> str:
    """Run ``prepare`` into ``run_dir`` (config.yaml, split_summary.json, tokenizer/, tokenizer_stats.json,
    prepare_timings.json) and return a printable report."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_runtime(cfg)
    cfg.save(run_dir / "config.yaml")
    prepared = prepare(cfg, run_dir)
    summary = split_summary(prepared.split)
    save_split_summary(summary, run_dir / "split_summary.json")
    stats = prepared.tokenizer.stats()
    write_json(run_dir / "tokenizer_stats.json", stats)
    write_json(run_dir / "prepare_timings.json", prepared.timings_s)
    timings = "  ".join(f"{k} {v:.1f}s" for k, v in prepared.timings_s.items())
    return (f"{format_split_summary(summary)}\n\nSID stats ({cfg.tokenizer.kind}, {len(prepared.codes)} items):\n"
            f"{json.dumps(stats, indent=2)}\n\ntimings: {timings}\nwritten to {run_dir}")
