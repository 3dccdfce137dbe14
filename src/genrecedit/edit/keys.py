"""Keys and values at (decoder layer, decoder index) of teacher-forced requests, and the C0 second moment.

Conventions (docs/method.md §5): to predict SID position p the decoder input is [start, c_0 .. c_{p-1}], so position p's
key, value, δ and ΔW_p all live at **decoder index p**; the key is the input of ``wo``. Always on the unedited model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from genrecedit.model.decoder import DecoderCache, EncodedBatch, SteppedDecoder
from genrecedit.model.distributed import DistContext, all_reduce_sum, barrier
from genrecedit.model.tokens import TokenLayout, length_batches


@dataclass
class TeacherForced:
    """One batch run teacher-forced through all P indices of the unedited decoder.

    enc: encoder states; cache: self-attn K/V of all P indices (slice ``[:p]`` for what index p attends to);
    keys[p][l] [B, d_ff], values[p][l] [B, d_model], pre[p][l] [B, d] residual entering layer l's FFN at index p.
    """

    enc: EncodedBatch
    cache: DecoderCache
    keys: list[list[torch.Tensor]]
    values: list[list[torch.Tensor]]
    pre: list[list[torch.Tensor]]

    def cache_before(self, p: int) -> DecoderCache:
        """The cache index p attends to: indices 0..p-1."""
        return DecoderCache([k[:, :, :p] for k in self.cache.keys], [v[:, :, :p] for v in self.cache.values])


@torch.no_grad()
def teacher_force(decoder: SteppedDecoder, layout: TokenLayout, histories: np.ndarray, target_codes: np.ndarray,
                  catalog_codes: np.ndarray) -> TeacherForced:
    """histories [B, L] and target codes [B, P] -> every index's FFN keys/values on the unedited model."""
    device = decoder.device
    ids, mask = layout.encoder_inputs(histories, catalog_codes)
    enc = decoder.encode(ids.to(device), mask.to(device))
    dec_in, _ = layout.decoder_inputs(target_codes)
    dec_in = dec_in.to(device)
    cache = DecoderCache()
    keys, values, pre = [], [], []
    for t in range(layout.n_positions):
        out, cache = decoder.step(dec_in[:, t], cache, enc, capture=True)
        keys.append(out.keys)
        values.append(out.values)
        pre.append(out.pre_ffn)
    return TeacherForced(enc, cache, keys, values, pre)


@torch.no_grad()
def collect_keys(decoder: SteppedDecoder, layout: TokenLayout, histories: np.ndarray, target_codes: np.ndarray,
                 catalog_codes: np.ndarray, sites: list[tuple[int, int]], batch_size: int = 512,
                 desc: str | None = None) -> dict[tuple[int, int], torch.Tensor]:
    """Keys at each (layer, position) site for n teacher-forced samples -> {site: [n, d_ff] float32 (CPU)}."""
    out: dict[tuple[int, int], list[torch.Tensor]] = {s: [] for s in sites}
    batches = length_batches(histories, batch_size)  # similar lengths; keys are put back in input order below
    for rows in tqdm(batches, desc=desc or "keys", disable=desc is None, leave=False):
        tf = teacher_force(decoder, layout, histories[rows], target_codes[rows], catalog_codes)
        for layer, p in sites:
            out[(layer, p)].append(tf.keys[p][layer].float().cpu())
    back = torch.from_numpy(np.argsort(np.concatenate(batches))) if batches else None
    return {s: torch.cat(v)[back] if v else torch.zeros(0) for s, v in out.items()}


class SecondMoment:
    """Running mean of k kᵀ in float64: C0 = (1/N0) Σ k kᵀ over N0 training keys at one site."""

    def __init__(self, dim: int) -> None:
        self.total = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0

    def update(self, keys: torch.Tensor) -> None:
        """keys [n, d_ff]."""
        k = keys.detach().to("cpu", torch.float64)
        self.total += k.T @ k
        self.count += k.shape[0]

    def all_reduce(self, ctx: DistContext) -> "SecondMoment":
        """Sum (Σ k kᵀ, count) over the processes of ``ctx`` (torch.distributed all-reduce, float64), so every
        process holds the moment of all their keys. Alone: unchanged."""
        if ctx.distributed:
            all_reduce_sum(ctx, self.total)
            count = all_reduce_sum(ctx, torch.tensor([float(self.count)], dtype=torch.float64))
            self.count = int(count[0])
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)


def c0_cache_key(base_hash: str, train_fingerprint: str, site: tuple[int, int], n0: int) -> str:
    return hashlib.sha256(f"{base_hash}|{train_fingerprint}|{site}|{n0}".encode()).hexdigest()[:32]


def second_moments(decoder: SteppedDecoder, layout: TokenLayout, histories: np.ndarray, target_codes: np.ndarray,
                   catalog_codes: np.ndarray, sites: list[tuple[int, int]], base_hash: str, train_fingerprint: str,
                   cache_dir: Path | None, batch_size: int = 512,
                   ctx: DistContext | None = None) -> tuple[dict[tuple[int, int], torch.Tensor], bool]:
    """C0 at each site over the given training samples; cached per (base model, training data, site, N0).

    Returns ({site: [d_ff, d_ff] float64}, whether every site came from the cache).

    ctx: several processes (``model/distributed.py``) computing one C0 together: every process passes the same
    samples and keys its share of them (every world-th batch of ``batch_size`` samples of similar length), the sums
    Σ k kᵀ and counts are all-reduced in float64, and all get C0 over all N0 samples; rank 0 writes the cache.
    Alone (None): every sample here.
    """
    ctx = ctx or DistContext()
    n0 = len(histories)
    found: dict[tuple[int, int], torch.Tensor] = {}
    paths = {}
    for site in sites:
        if cache_dir is not None:
            paths[site] = Path(cache_dir) / f"c0-{c0_cache_key(base_hash, train_fingerprint, site, n0)}.safetensors"
            if paths[site].exists():
                found[site] = load_file(str(paths[site]))["c0"]
    missing = [s for s in sites if s not in found]
    if not missing:
        return found, True
    # a sum: the order only sets how much padding each batch carries. Several processes take every world-th batch
    # of the one-process batching, so each key is bit for bit the one a single process computes
    batches = length_batches(histories, batch_size)[ctx.rank::ctx.world]
    moments: dict[tuple[int, int], SecondMoment] = {}
    for rows in tqdm(batches, desc="C0 (training keys)", unit="batch", leave=False, disable=not ctx.is_main):
        tf = teacher_force(decoder, layout, histories[rows], target_codes[rows], catalog_codes)
        for layer, p in missing:
            key = tf.keys[p][layer]
            moments.setdefault((layer, p), SecondMoment(key.shape[1])).update(key)
    for layer, p in missing:
        # a process with no samples still joins the reduction, with zeros
        empty = SecondMoment(decoder.blocks[layer].layer[2].DenseReluDense.wo.in_features)
        found[(layer, p)] = moments.get((layer, p), empty).all_reduce(ctx).mean
        if cache_dir is not None and ctx.is_main:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            tmp = paths[(layer, p)].with_suffix(".tmp")
            save_file({"c0": found[(layer, p)].contiguous()}, str(tmp))
            tmp.replace(paths[(layer, p)])
    barrier(ctx)  # the cache is complete before any process goes on
    return found, False


def train_fingerprint(histories: np.ndarray, targets: np.ndarray) -> str:
    """Identifies the training samples C0 was computed over."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(histories).tobytes())
    digest.update(np.ascontiguousarray(targets).tobytes())
    return digest.hexdigest()

