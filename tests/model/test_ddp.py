"""Training under ``torchrun`` (DDP, gloo on the CPU): two processes with the same global batch follow the
single-process loss curve, only rank 0 writes, and a two-process run resumes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SPY = Path(__file__).with_name("ddp_spy.py")


def _torchrun(run_dir: Path, log_dir: Path, config: Path, *overrides: str) -> subprocess.CompletedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SPY),
            str(log_dir), str(run_dir), "train", "-c", str(config), "-r", str(run_dir)]
    for o in overrides:
        args += ["-o", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "train.json").read_text())["history"]


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on POSIX")
def test_two_processes_follow_the_single_process_loss_curve_and_only_rank_0_writes(tiny_run, tmp_path):
    """tiny_run was trained by one process at train.batch_size 64; the same config under ``torchrun
    --nproc_per_node=2`` takes 32 samples a process per step (the same global batches, in the same order). Its
    per-epoch training loss equals the single-process one within float tolerance (gradients are averaged by
    all-reduce, so only the summation order differs), as do validation NDCG@10 and the best epoch. Rank 1 writes
    nothing under the run directory; rank 0 writes the model, optimizer state and train.json. Then a second
    two-process call with one more epoch resumes: the first epochs are kept and one is added."""
    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    shutil.copytree(tiny_run / "tokenizer", run_dir / "tokenizer")  # the same SIDs as the one-process run
    done = _torchrun(run_dir, tmp_path / "spy", tiny_run / "config.yaml")
    single, double = _history(tiny_run), _history(run_dir)
    assert len(double) == len(single) == 2
    np.testing.assert_allclose([h["train_loss"] for h in double], [h["train_loss"] for h in single], rtol=1e-4)
    np.testing.assert_allclose([h["valid_ndcg@10"] for h in double], [h["valid_ndcg@10"] for h in single],
                               atol=1e-3)
    assert json.loads((run_dir / "train.json").read_text())["processes"] == 2
    assert done.stdout.count("best epoch") == 1  # the CLI's summary: rank 0 only

    rank0 = json.loads((tmp_path / "spy" / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "spy" / "rank1.json").read_text())
    assert rank1 == []
    for name in ("model/model.safetensors", "model/last.safetensors", "model/optimizer.pt",
                 "model/train_state.json", "train.json", "config.yaml"):
        assert any(w.endswith(name) for w in rank0), (name, rank0)

    _torchrun(run_dir, tmp_path / "spy2", tiny_run / "config.yaml", "train.epochs=3")
    resumed = _history(run_dir)
    assert len(resumed) == 3 and resumed[:2] == double
    assert json.loads((tmp_path / "spy2" / "rank1.json").read_text()) == []
