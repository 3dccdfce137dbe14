"""Tiny trained runs for the serving tests and the load-test smoke check.

``synthetic_dataset`` writes a small atomic dataset whose item titles carry a topic word, and whose users mostly stay
inside one topic, so that a hashing-encoder neighbour of a new "topic 3" item is a topic-3 item with real histories.
``game_slice`` writes the amazon2018-game interactions of its 250 most active users from before its test period and
returns items first seen in the test period (the cold items a shop would add). ``train_tiny_run`` trains a backbone
on either.

Run as a script to build a run directory for ``bench/serve_load.py``:
``python tests/serving/serving_run.py /tmp/tiny-run``.
"""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

from genrecedit.config import load_config
from genrecedit.runs.backbone import train_backbone

TOPICS = ["racing", "puzzle", "shooter", "farming", "soccer", "dungeon", "space", "pirate"]
NOUNS = ["legends", "arena", "chronicles", "deluxe", "saga", "tactics", "academy", "rivals"]
N_USERS = 160
PER_USER = 18
TOPIC_SHARE = 0.85

SHARED_DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
# λ small enough that the tiny model's few requests are learnt (its C0 of 200 keys is a weak prior at λ = 1000)
SERVICE_OVERRIDES = ["edit.lam=10"]
TINY_OVERRIDES = [
    "embedding.encoder=hashing", "tokenizer.codebook_size=8", "tokenizer.dedup_capacity=64", "model.d_model=16",
    "model.num_heads=2",
    "model.d_kv=8", "model.encoder_layers=1", "model.decoder_layers=2", "model.d_ff=32", "model.decoder_d_ff=64",
    "train.epochs=1", "train.eval_cases=50", "train.eval_beam=10", "edit.c0_samples=200", "edit.probe_samples=100",
    "edit.efficacy_samples=50", "decode.beam=10", "decode.k=10", "threads=1",
]


def topic_title(topic: int, noun: int, extra: str = "") -> str:
    return f"{TOPICS[topic]} {TOPICS[topic]} {NOUNS[noun]} {extra}".strip()


def new_item_title(topic: int, tag: str) -> str:
    """Text of an item that is not in the synthetic dataset but clearly belongs to ``topic``."""
    return topic_title(topic, len(tag) % len(NOUNS), f"{tag} edition")


def synthetic_dataset(out_dir: Path, seed: int = 0) -> Path:
    """Write ``<out_dir>/tiny/tiny.inter`` and ``tiny.item`` (64 items, 160 users) and return the folder."""
    rng = np.random.default_rng(seed)
    folder = Path(out_dir) / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    items = [(f"i{t}{n}", topic_title(t, n)) for t in range(len(TOPICS)) for n in range(len(NOUNS))]
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(N_USERS):
        topic = u % len(TOPICS)
        times = np.sort(rng.uniform(0, 1e6, PER_USER)).round()
        for ts in times:
            t = topic if rng.random() < TOPIC_SHARE else int(rng.integers(len(TOPICS)))
            lines.append(f"u{u}\ti{t}{int(rng.integers(len(NOUNS)))}\t{ts:.0f}")
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    (folder / "tiny.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"{i}\t{t}\n" for i, t in items))
    return folder


def game_slice(game_dir: Path, out_dir: Path, n_users: int = 250, n_cold: int = 12) -> tuple[Path, list[dict]]:
    """A slice of amazon2018-game: interactions before the 90 % time quantile (its test period starts there) of
    the ``n_users`` most active users, written as atomic files; plus up to ``n_cold`` items first seen in the
    test period, as ``{"item_id", "text"}``, that the slice does not contain."""
    import pandas as pd

    inter = pd.read_csv(game_dir / "amazon2018-game.inter.gz", sep="\t", dtype=str)
    inter.columns = ["user_id", "item_id", "timestamp"]
    inter["timestamp"] = inter["timestamp"].astype(float)
    titles = pd.read_csv(game_dir / "amazon2018-game.item.gz", sep="\t", dtype=str, quoting=3)
    titles.columns = ["item_id", "title"]
    titles = titles.dropna().set_index("item_id")["title"]
    cutoff = float(np.quantile(inter["timestamp"], 0.9))
    first_seen = inter.groupby("item_id")["timestamp"].min()
    before = inter[inter["timestamp"] < cutoff]
    users = before["user_id"].value_counts().index[:n_users]
    part = before[before["user_id"].isin(users)].sort_values(["user_id", "timestamp"], kind="stable")
    folder = Path(out_dir) / "game-slice"
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "game-slice.inter.gz", "wt") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{u}\t{i}\t{t:.0f}\n" for u, i, t in part.itertuples(index=False))
    kept = part["item_id"].unique()
    with gzip.open(folder / "game-slice.item.gz", "wt") as f:
        f.write("item_id:token\ttitle:token_seq\n")
        f.writelines(f"{i}\t{titles[i]}\n" for i in kept)
    cold = [i for i in first_seen[first_seen >= cutoff].sort_values().index if i in titles.index
            and i not in set(kept) and titles[i].strip()]
    return folder, [{"item_id": i, "text": titles[i]} for i in cold[:n_cold]]


def train_tiny_run(dataset: Path, run_dir: Path, cache_dir: Path, extra: list[str] | None = None) -> Path:
    """Train the tiny backbone on ``dataset`` into ``run_dir`` (about 5-10 s on 2 cores)."""
    cfg = load_config(None, [f"dataset={dataset}", f"cache_dir={cache_dir}", *TINY_OVERRIDES, *(extra or [])])
    train_backbone(cfg, run_dir, resume=False)
    return Path(run_dir)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    train_tiny_run(synthetic_dataset(root / "data"), root / "run", root / "cache")
    print(root / "run")
