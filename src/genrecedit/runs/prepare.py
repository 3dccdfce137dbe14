"""Data → split → embeddings → semantic IDs: everything a backbone is trained and edited on."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from genrecedit.config import RunConfig
from genrecedit.data.dataset import RecDataset, Split
from genrecedit.data.protocols import make_split
from genrecedit.data.readers import load_dataset
from genrecedit.errors import ArtifactMismatchError
from genrecedit.model.tokens import TokenLayout
from genrecedit.text.embed import embed_items, make_encoder
from genrecedit.tokenizer.sids import SemanticIdTokenizer

TOKENIZER_DIR = "tokenizer"


@dataclass
class Prepared:
    """A dataset under a protocol, with item embeddings [n_items, d] and SIDs [n_items, P] in catalog order."""

    config: RunConfig
    dataset: RecDataset
    split: Split
    embeddings: np.ndarray
    tokenizer: SemanticIdTokenizer
    codes: np.ndarray
    timings_s: dict = field(default_factory=dict)


def configure_runtime(cfg: RunConfig) -> None:
    """Threads and seeds for a run, once, before any work. ``threads`` caps torch and the BLAS/OpenMP pools that
    scikit-learn uses (the linear probes): left uncapped they oversubscribe a shared machine, 10 s a probe instead
    of 0.05 s."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        threadpool_limits(cfg.threads)
    torch.manual_seed(cfg.seed)


def prepare(cfg: RunConfig, run_dir: Path | None = None) -> Prepared:
    """Load, split, embed and tokenize. A tokenizer saved in ``run_dir/tokenizer`` is reused (a trained model
    belongs to it); otherwise one is fitted on the warm (training) items, and cold items get SIDs from the frozen
    tokenizer via ``assign`` — exactly how an item added after training would."""
    timings: dict[str, float] = {}
    cache_dir = Path(cfg.cache_dir)
    t0 = time.perf_counter()
    ds = load_dataset(cfg.dataset, Path(cfg.data_root) if cfg.data_root else None, cache_dir)
    timings["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    split = make_split(ds, cfg.split)
    timings["split"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    texts = ds.items.loc[split.item_ids, "text"].tolist()
    encoder = make_encoder(cfg.embedding.encoder, cfg.device, cfg.embedding.batch_size)
    embeddings = embed_items(encoder, texts, cache_dir / "embeddings")
    timings["embed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok_dir = Path(run_dir) / TOKENIZER_DIR if run_dir is not None else None
    if tok_dir is not None and tok_dir.exists():
        tokenizer = SemanticIdTokenizer.load(tok_dir)
        missing = [i for i in split.item_ids if i not in tokenizer]
        if missing:
            raise ArtifactMismatchError(f"{tok_dir} has no SIDs for {len(missing)} catalog items "
                                        f"(e.g. {missing[0]!r}); was it made for another dataset or split?")
    else:
        tokenizer = fit_tokenizer(cfg, split, embeddings)
        if tok_dir is not None:
            tokenizer.save(tok_dir)
    codes = tokenizer.lookup(split.item_ids)
    timings["tokenize"] = time.perf_counter() - t0
    return Prepared(cfg, ds, split, embeddings, tokenizer, codes, timings)


def fit_tokenizer(cfg: RunConfig, split: Split, embeddings: np.ndarray) -> SemanticIdTokenizer:
    """Fit on warm items only, then assign the cold ones with the frozen quantiser."""
    tok_cfg = dataclasses.replace(cfg.tokenizer, device=cfg.device, seed=cfg.seed)
    warm = np.flatnonzero(split.warm)
    cold = np.flatnonzero(~split.warm)
    with tqdm(total=2, desc=f"tokenizer ({tok_cfg.kind})", leave=False) as bar:
        tokenizer = SemanticIdTokenizer(tok_cfg).fit(embeddings[warm], [split.item_ids[i] for i in warm])
        bar.update()
        if len(cold):
            tokenizer.assign(embeddings[cold], [split.item_ids[i] for i in cold])
        bar.update()
    return tokenizer


def layout_for(tokenizer: SemanticIdTokenizer) -> TokenLayout:
    """The token layout a backbone over this tokenizer's SIDs uses."""
    return TokenLayout(tuple(int(s) for s in tokenizer.codebook_sizes))
