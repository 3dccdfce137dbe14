"""C0 over several processes (torch.distributed, gloo): each process keys its share of the training samples (every
world-th length batch) and the float64 sums Σ k kᵀ and counts are all-reduced; the result equals one process's C0
over all samples to float64 round-off."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genrecedit.edit.keys import second_moments
from genrecedit.model.decoder import SteppedDecoder
from genrecedit.model.distributed import DistContext

SITES = [(1, 2), (0, 0), (2, 3)]


def _samples(codes: np.ndarray, n: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    histories = rng.integers(0, len(codes), size=(n, 6))
    lengths = rng.integers(0, 7, n)
    histories[np.arange(6)[None, :] < 6 - lengths[:, None]] = -1  # left padding: histories of every length
    return histories, codes[rng.integers(0, len(codes), n)]


def _worker(rank: int, world: int, init_file: str, model, layout, codes, out: str, cache: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = DistContext(rank, world)
        dec = SteppedDecoder(model, layout.n_positions)
        results = {}
        for n in (51, 1):  # 7 batches of ≤ 8 (4 + 3 a process); and one sample, so that rank 1 keys none
            histories, targets = _samples(codes, n)
            c0, cached = second_moments(dec, layout, histories, targets, codes, SITES, "h", f"fp{n}",
                                        cache if n == 51 else None, batch_size=8, ctx=ctx)
            results[n] = ({s: v.clone() for s, v in c0.items()}, cached)
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sharded_c0_equals_single_process_c0(tiny_model, tiny_layout, tiny_codes, tmp_path):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    single = {n: second_moments(dec, tiny_layout, *_samples(tiny_codes, n), tiny_codes, SITES, "h", "fp", None,
                                batch_size=8)[0] for n in (51, 1)}
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), tiny_model, tiny_layout, tiny_codes, str(tmp_path / "c0"),
                            str(tmp_path / "cache")), nprocs=2, join=True)
    for rank in (0, 1):
        sharded = torch.load(tmp_path / f"c0.{rank}", weights_only=False)
        for n in (51, 1):
            c0, cached = sharded[n]
            assert not cached
            for site in SITES:
                assert c0[site].dtype == torch.float64
                torch.testing.assert_close(c0[site], single[n][site], rtol=1e-10, atol=1e-12 * float(
                    single[n][site].abs().max()))
    # rank 0 wrote the cache; a later single-process call over the same samples reads it
    cached_c0, cached = second_moments(dec, tiny_layout, *_samples(tiny_codes, 51), tiny_codes, SITES, "h", "fp51",
                                       tmp_path / "cache", batch_size=8)
    assert cached and len(list((tmp_path / "cache").glob("c0-*.safetensors"))) == len(SITES)
    for site in SITES:
        torch.testing.assert_close(cached_c0[site], single[51][site], rtol=1e-10, atol=0.0)
