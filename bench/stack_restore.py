"""Restore and roll back a long edit stack in the live service (issue 21: 1,000 batches restored in ≤ 10 s).

``write_stack`` gives a service's state ``n`` small batches the way the service records them (registry rows: ids,
texts, text embeddings, SIDs from the frozen tokenizer; an artifact batch each: random small float32 ΔW at the edit
positions, the batch's text-only knowledge and its replayed key covariance folded into the statistic) without
running ``n`` real edits; the restore path it exercises is the service's own (``LiveService._restore``: registry
replay of the catalog, artifact load, fingerprint checks, snapshot). The script writes such a stack into a fresh
state dir for a trained run, then measures opening the service (the restore), one more batch written as a new
version and loaded by a follower (``save_next``: with the unchanged batches hard-linked and reused, against writing
and reading every batch), rolling back the newest batch, and loading the version the rollback wrote.

    python bench/stack_restore.py --model runs/demo --batches 1000 --out runs/bench/stack_restore
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from genrecedit.atomic import write_json
from genrecedit.edit.artifact import EditArtifact, EditBatch
from genrecedit.serving.catalog import delta_fingerprint, knowledge_for
from genrecedit.serving.service import ARTIFACTS, LiveService, ServiceConfig
from genrecedit.text.cache import embed_items

NAME = "stack_restore"


def stack_item(j: int, texts: list[str] | None = None) -> tuple[str, str]:
    """The id and text of the stack's j-th item. Without ``texts``, texts reuse a few words (each has warm
    neighbours: right for a tiny catalog); with the catalog's ``texts``, an edition of a different catalog item each
    (spread over the catalog, so a real tokenizer's SID prefixes do not fill up)."""
    if texts:
        return f"stack-{j:05d}", f"{texts[(j * 7919) % len(texts)]} (stack edition {j})"
    words = ["racing", "puzzle", "shooter", "farming", "soccer", "dungeon", "space", "pirate"]
    return f"stack-{j:05d}", f"{words[j % len(words)]} {words[(j // 8) % len(words)]} edition {j}"


def write_stack(service: LiveService, n: int, start: int = 0, seed: int = 0, scale: float = 1e-3,
                texts: list[str] | None = None) -> EditArtifact:
    """Append batches ``start``..``start + n - 1`` (one item each, ``stack_item``) to ``service``'s registry and
    artifact, as committed adds would leave them; the service must be reopened to serve them. Batch j's ΔW is drawn
    from a generator seeded with (seed, j), so two states written with the same seed share their batches."""
    run, editor = service.run, service.editor
    snap = service.snapshot
    catalog = snap.catalog
    n_pos = run.recommender.layout.n_positions
    positions = range(n_pos) if editor.cfg.positions is None else sorted(editor.cfg.positions)
    layers = list(snap.artifact.layers) if snap.artifact else [min(p, editor.n_layers - 1) for p in range(n_pos)]
    artifact = snap.artifact.copy() if snap.artifact else EditArtifact(run.base_hash, layers, [], editor.cfg.scheme)
    model = run.recommender.model
    d_model, d_ff = model.config.d_model, model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
    version = service.registry.model_version()
    records = []
    for j in range(start, start + n):
        seq = service.registry.next_seq() + len(records)
        batch_id = f"b{seq:06d}"
        item_id, text = stack_item(j, texts)
        emb = embed_items(service.encoder, [text], service.embedding_cache)
        catalog = catalog.extended(batch_id, [item_id], [text], emb)
        new = catalog.batch_indices(batch_id)
        g = torch.Generator().manual_seed(seed * 1_000_003 + j)
        dw = {p: torch.randn(d_model, d_ff, generator=g) * scale for p in positions}
        meta = {"lam": editor.cfg.lam, "synthetic": True}  # as if solved at the service's λ (a rollback keeps it)
        batch = EditBatch(batch_id, [item_id], catalog.codes[new], dw, {}, meta, {},
                          knowledge_for(run.prepared.split.train, catalog, new, run.config.knowledge))
        artifact.append(replace(batch, key_cov=editor.key_covariance(batch, layers, catalog.codes)))
        service.registry.add_pending(seq, catalog.batches[-1])
        records.append((batch_id, delta_fingerprint(batch), len(batch.requests)))
    rel = f"{ARTIFACTS}/stack-{artifact.batches[-1].batch_id}"
    artifact.save(service.state_dir / rel)
    for batch_id, digest, n_requests in records:
        version += 1
        service.registry.activate(batch_id, rel, digest, n_requests, {}, {"synthetic": True}, version)
    return artifact


def save_next(artifact: EditArtifact, folder: Path, base_hash: str, repeats: int = 2) -> dict:
    """What one more batch on top of ``artifact`` costs to write as a new version and to load by a follower that
    holds ``artifact``: the save with the unchanged batches hard-linked (the service's way) against writing every
    batch, and the load reusing the batches it read against reading every file; best of ``repeats`` each, side by
    side in one process."""
    nxt = artifact.copy()
    nxt.batches.append(replace(artifact.batches[-1], batch_id="bench-next"))  # a new object: written, not linked
    times: dict[str, list[float]] = {"save_linked": [], "save_whole": [], "load_reuse": [], "load_whole": []}
    for r in range(repeats):
        for kind, art in (("save_whole", replace(nxt, stored={})), ("save_linked", nxt.copy())):
            t0 = time.perf_counter()
            art.save(folder / f"{kind}-{r}")
            times[kind].append(time.perf_counter() - t0)
        for kind, reuse in (("load_whole", None), ("load_reuse", artifact)):
            t0 = time.perf_counter()
            EditArtifact.load(folder / f"save_linked-{r}", base_hash, reuse=reuse)
            times[kind].append(time.perf_counter() - t0)
    return {f"next_{kind}_seconds": min(v) for kind, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="trained run directory")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/stack_restore"))
    parser.add_argument("--override", "-o", action="append", default=[], help="run config override")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stack-restore-") as tmp:
        cfg = ServiceConfig(state_dir=Path(tmp) / "state", exposure_cases=0, insecure_no_auth=True)
        service = LiveService.open(args.model, cfg, args.override)
        t0 = time.perf_counter()
        write_stack(service, args.batches, texts=service.run.prepared.dataset.items["text"].tolist())
        write_s = time.perf_counter() - t0
        service.close()
        t0 = time.perf_counter()
        service = LiveService.open(args.model, cfg, args.override)  # loads the run, then restores the stack
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        service.snapshot = service._restore(reuse=False)  # the restore alone, as at a restart: registry replay,
        # artifact load, digest checks, snapshot
        restore_s = time.perf_counter() - t0
        add = save_next(service.snapshot.artifact, Path(tmp) / "next", service.run.base_hash)
        newest = service.snapshot.active_batches[-1]
        t0 = time.perf_counter()
        service.roll_back(newest)
        rollback_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        service.snapshot = service._restore(read_only=True)  # as a follower loads the version the rollback wrote
        reload_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in {f.stat().st_ino: f for f in (Path(tmp) / "state" / ARTIFACTS).rglob("*")
                                              if f.is_file()}.values())
        service.close()
    data = {"model": str(args.model), "batches": args.batches, "write_seconds": write_s, "open_seconds": open_s,
            "restore_seconds": restore_s, "rollback_newest_seconds": rollback_s,
            "restore_next_version_seconds": reload_s, **add, "artifact_bytes_after": size}
    write_json(args.out / f"{NAME}.json", data)
    print(json.dumps(data, indent=2))
    return data


if __name__ == "__main__":
    main()
