"""The artifact as a long stack: one accumulated key statistic per site (saved once), small batch files, format-1
artifacts still loading, and compaction with identical outputs where it can be exact (refused where it cannot)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from genrecedit.edit.artifact import KEY_STATS, MANIFEST, EditArtifact, EditBatch
from genrecedit.edit.gate import KeyGate
from genrecedit.edit.knowledge import EditRequests
from genrecedit.errors import ArtifactMismatchError
from genrecedit.model.beam import beam_search
from genrecedit.model.decoder import SteppedDecoder
from genrecedit.model.trie import PrefixTrie

LAYERS = [0, 1, 2, 1]


def _batch(name: str, seed: int, d_model: int, d_ff: int, items: np.ndarray, codes: np.ndarray,
           positions=range(4), history: int = 5, per_item: int = 3, scale: float = 0.2) -> EditBatch:
    """A batch with float32 ΔW and its covariance from random keys, and requests for ``items``."""
    g = torch.Generator().manual_seed(seed)
    dw = {p: (torch.randn(d_model, d_ff, generator=g, dtype=torch.float64) * scale).float() for p in positions}
    keys = {p: torch.randn(len(items) * per_item, d_ff, generator=g, dtype=torch.float64) for p in positions}
    rng = np.random.default_rng(seed)
    requests = EditRequests(rng.integers(-1, len(codes), (len(items) * per_item, history)),
                            np.repeat(items, per_item), np.full(len(items) * per_item, -1))
    return EditBatch(name, [f"i{i}" for i in items], codes[items], dw, {p: k.T @ k for p, k in keys.items()},
                     {"lam": 1.0}, {}, requests)


def _stack(tiny_model, tiny_codes, n: int, start: int = 0) -> EditArtifact:
    d_ff = tiny_model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
    art = EditArtifact("h", list(LAYERS))
    for j in range(start, start + n):
        art.append(_batch(f"b{j}", j, tiny_model.config.d_model, d_ff, np.array([2 * j, 2 * j + 1]), tiny_codes))
    return art


def _decode(tiny_model, tiny_layout, tiny_codes, tiny_histories, schedule):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    with torch.no_grad():
        return beam_search(dec, tiny_layout, trie, ids, mask, 8, 8, edits=schedule)


def test_statistic_is_accumulated_and_saved_once(tiny_model, tiny_codes, tmp_path):
    covs = []
    art = EditArtifact("h", list(LAYERS))
    d_ff = tiny_model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
    for j in range(3):
        b = _batch(f"b{j}", j, tiny_model.config.d_model, d_ff, np.array([j]), tiny_codes)
        covs.append(b.key_cov)
        art.append(b)
    for p in range(4):
        torch.testing.assert_close(art.previous_cov(p), covs[0][p] + covs[1][p] + covs[2][p])
    assert all(not b.key_cov for b in art.batches)  # nothing per batch in memory
    art.save(tmp_path / "edits")
    assert (tmp_path / "edits" / KEY_STATS).exists()
    for j in range(3):
        names = set(load_file(str(tmp_path / "edits" / f"batch-{j:04d}.safetensors")))
        assert not any(n.startswith("key_cov") for n in names)
        assert {"requests.histories", "requests.items", "requests.sources", "sids"} <= names
    loaded = EditArtifact.load(tmp_path / "edits", base_hash="h")
    for p in range(4):
        assert torch.equal(loaded.previous_cov(p), art.previous_cov(p))
        assert torch.equal(loaded.total_delta(p), art.total_delta(p))
        assert loaded.batches[2].delta_w[p].dtype == torch.float32
    np.testing.assert_array_equal(loaded.batches[1].requests.histories, art.batches[1].requests.histories)
    # removing the newest with its covariance: the statistic of the first two within float64 rounding
    loaded.remove_newest(covs[2])
    for p in range(4):
        torch.testing.assert_close(loaded.previous_cov(p), covs[0][p] + covs[1][p], rtol=1e-12, atol=1e-10)
    # a batch list appended to behind the artifact's back is refused, not solved against a stale statistic
    loaded.batches.append(art.batches[2])
    with pytest.raises(ArtifactMismatchError, match="statistic"):
        loaded.previous_cov(1)


def test_format_1_artifact_loads_with_its_covariances_folded(tiny_model, tiny_codes, tiny_layout, tiny_histories,
                                                             tmp_path):
    """A format-1 artifact (a float64 ``key_cov.p`` in every batch file, no statistic file) as the earlier code
    wrote it."""
    d_ff = tiny_model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
    batches = [_batch(f"b{j}", j, tiny_model.config.d_model, d_ff, np.array([j]), tiny_codes) for j in range(2)]
    folder = tmp_path / "old"
    folder.mkdir()
    manifest = {"base_hash": "h", "layers": LAYERS, "scheme": "position_wise", "batches": []}
    for i, b in enumerate(batches):
        tensors = {f"delta_w.{p}": d.double().contiguous() for p, d in b.delta_w.items()}
        tensors.update({f"key_cov.{p}": c.contiguous() for p, c in b.key_cov.items()})
        tensors["sids"] = torch.from_numpy(np.ascontiguousarray(b.sids))
        save_file(tensors, str(folder / f"batch-{i:04d}.safetensors"))
        manifest["batches"].append({"batch_id": b.batch_id, "item_ids": b.item_ids, "meta": b.meta})
    (folder / MANIFEST).write_text(json.dumps(manifest))
    old = EditArtifact.load(folder, base_hash="h")
    assert old.stats_known and all(b.requests is None for b in old.batches)
    for p in range(4):
        torch.testing.assert_close(old.previous_cov(p), batches[0].key_cov[p] + batches[1].key_cov[p])
    # its batches keep their covariance, so the newest comes off with the statistic known
    one = old.copy()
    one.remove_newest()
    assert one.stats_known
    torch.testing.assert_close(one.previous_cov(2), batches[0].key_cov[2], rtol=1e-12, atol=1e-10)
    # re-saved in format 2: one statistic, no covariance per batch, the same outputs
    old.save(tmp_path / "new")
    new = EditArtifact.load(tmp_path / "new", base_hash="h")
    assert json.loads((tmp_path / "new" / MANIFEST).read_text())["format"] == 2
    for p in range(4):
        assert torch.equal(new.previous_cov(p), old.previous_cov(p))
    a = _decode(tiny_model, tiny_layout, tiny_codes, tiny_histories, old.schedule())
    b = _decode(tiny_model, tiny_layout, tiny_codes, tiny_histories, new.schedule())
    assert torch.equal(a.items, b.items) and torch.equal(a.scores, b.scores)


def test_batch_file_on_games_shapes_is_under_2_mb(tmp_path):
    """game: d_model 64, decoder d_ff 1,024, positions 1-3 edited, 100 items x 5 histories of 20 a round."""
    d_model, d_ff, n_items, per_item = 64, 1024, 100, 5
    codes = np.random.default_rng(0).integers(0, 256, (n_items, 4))
    art = EditArtifact("h", [0, 1, 2, 3])
    for j in range(2):
        art.append(_batch(f"b{j}", j, d_model, d_ff, np.arange(n_items), codes, positions=(1, 2, 3), history=20,
                          per_item=per_item, scale=0.01))
    art.save(tmp_path / "edits")
    sizes = [(tmp_path / "edits" / f"batch-{j:04d}.safetensors").stat().st_size for j in range(2)]
    stats = (tmp_path / "edits" / KEY_STATS).stat().st_size
    assert max(sizes) <= 2_000_000  # a round's growth: one batch file (ΔW float32 ≈ 786 kB, requests ≈ 42 kB)
    assert stats == pytest.approx(3 * d_ff * d_ff * 8, rel=0.01)  # once per artifact, not per batch


@pytest.mark.parametrize("mode", ["one_one", "all"])
@pytest.mark.parametrize("keep_newest", [0, 2])
def test_compaction_keeps_outputs_identical(tiny_model, tiny_layout, tiny_codes, tiny_histories, tmp_path, mode,
                                            keep_newest):
    art = _stack(tiny_model, tiny_codes, 6)
    small = art.compacted(mode, keep_newest=keep_newest)
    assert len(small.batches) == 1 + keep_newest and small.batches[0].compacted
    assert small.batches[0].meta["compacted_from"] == [f"b{j}" for j in range(6 - keep_newest)]
    assert small.item_ids() == art.item_ids() and len(art.batches) == 6  # the original is not changed
    for p in range(4):
        assert torch.equal(small.total_delta(p), art.total_delta(p))  # a prefix summed in the same order: bit-exact
        assert torch.equal(small.previous_cov(p), art.previous_cov(p))
    small.save(tmp_path / "small")
    loaded = EditArtifact.load(tmp_path / "small", base_hash="h")
    a = _decode(tiny_model, tiny_layout, tiny_codes, tiny_histories, art.schedule(mode))
    b = _decode(tiny_model, tiny_layout, tiny_codes, tiny_histories, loaded.schedule(mode))
    assert torch.equal(a.items, b.items) and torch.equal(a.scores, b.scores)
    # later batches stack on a compacted artifact as on the original: the same sum, bit for bit
    more = _stack(tiny_model, tiny_codes, 2, start=6).batches
    for b in more:
        art.batches.append(b)
        loaded.batches.append(b)
    for p in range(4):
        assert torch.equal(loaded.total_delta(p), art.total_delta(p))


def test_compaction_refuses_what_it_cannot_reproduce(tiny_model, tiny_codes):
    art = _stack(tiny_model, tiny_codes, 3)
    for mode in ("prefix", "preserve"):
        with pytest.raises(ValueError, match="prefix"):
            art.compacted(mode)
    with pytest.raises(ValueError, match="nothing to compact"):
        art.compacted("one_one", keep_newest=2)
    gated = art.copy()
    d_ff = art.batches[0].delta_w[1].shape[1]
    gated.batches[1] = EditBatch("g", ["x"], art.batches[1].sids, art.batches[1].delta_w, {}, {},
                                 {1: KeyGate(torch.ones(d_ff), torch.tensor(0.0))})
    with pytest.raises(ValueError, match="gate"):
        gated.compacted("one_one")
    # a compacted artifact is not decoded under a per-batch trigger
    small = art.compacted("one_one")
    with pytest.raises(ArtifactMismatchError, match="compacted"):
        small.schedule("prefix")
    assert small.schedule("one_one") is not None


def test_cli_compacts_an_artifact_dir_and_refuses_prefix(tiny_model, tiny_codes, tmp_path):
    from typer.testing import CliRunner

    from genrecedit.cli import app

    art = _stack(tiny_model, tiny_codes, 4)
    art.save(tmp_path / "edits")
    refused = CliRunner().invoke(app, ["compact", str(tmp_path / "edits"), "--trigger", "prefix"])
    assert refused.exit_code == 2 and "prefix" in refused.output
    assert len(EditArtifact.load(tmp_path / "edits").batches) == 4  # nothing written
    ok = CliRunner().invoke(app, ["compact", str(tmp_path / "edits"), "--keep-newest", "1"])
    assert ok.exit_code == 0, ok.output
    small = EditArtifact.load(tmp_path / "edits")
    assert len(small.batches) == 2 and small.batches[0].compacted
    for p in range(4):
        assert torch.equal(small.total_delta(p), art.total_delta(p))


def _new_batch(tiny_model, tiny_codes, j: int) -> EditBatch:
    d_ff = tiny_model.decoder.block[0].layer[2].DenseReluDense.wo.in_features
    return _batch(f"b{j}", j, tiny_model.config.d_model, d_ff, np.array([2 * j, 2 * j + 1]), tiny_codes)


def _same_file(a, b) -> bool:
    return a.stat().st_ino == b.stat().st_ino and a.stat().st_dev == b.stat().st_dev


def test_a_save_links_unchanged_batches_and_writes_changed_ones(tiny_model, tiny_codes, tmp_path):
    """Adding to a long stack writes one batch: the others are hard links to the files they were saved to (or
    loaded from). A batch replaced by a new object (a recomputed ΔW, a new id) is written, never linked."""
    from dataclasses import replace

    art = _stack(tiny_model, tiny_codes, 3)
    art.save(tmp_path / "v1")
    nxt = art.copy()
    nxt.append(_new_batch(tiny_model, tiny_codes, 3))
    nxt.save(tmp_path / "v2")
    for j in range(3):
        assert _same_file(tmp_path / "v1" / f"batch-{j:04d}.safetensors", tmp_path / "v2" / f"batch-{j:04d}.safetensors")
    # a batch recomputed under the same id (an older batch rolled back) is a new object: written, not linked
    recomputed = nxt.copy()
    recomputed.batches[1] = replace(recomputed.batches[1], delta_w={p: w * 2 for p, w in nxt.batches[1].delta_w.items()})
    recomputed.save(tmp_path / "v3")
    assert _same_file(tmp_path / "v2" / "batch-0000.safetensors", tmp_path / "v3" / "batch-0000.safetensors")
    assert not _same_file(tmp_path / "v2" / "batch-0001.safetensors", tmp_path / "v3" / "batch-0001.safetensors")
    # removing the older versions leaves the newest whole, and it loads to what was saved
    import shutil
    shutil.rmtree(tmp_path / "v1")
    shutil.rmtree(tmp_path / "v2")
    back = EditArtifact.load(tmp_path / "v3", "h")
    assert back.batch_ids() == recomputed.batch_ids()
    for p in range(4):
        assert torch.equal(back.total_delta(p), recomputed.total_delta(p))
        assert torch.equal(back.batches[1].delta_w[p], nxt.batches[1].delta_w[p] * 2)
    # a linked file that was changed or removed is not trusted: the batch is written again
    again = back.copy()
    (tmp_path / "v3" / "batch-0002.safetensors").unlink()
    save_file(_batch_tensors_of(back.batches[2]), str(tmp_path / "v3" / "batch-0002.safetensors"))
    again.save(tmp_path / "v4")
    assert not _same_file(tmp_path / "v3" / "batch-0002.safetensors", tmp_path / "v4" / "batch-0002.safetensors")
    assert _same_file(tmp_path / "v3" / "batch-0000.safetensors", tmp_path / "v4" / "batch-0000.safetensors")


def _batch_tensors_of(batch):
    from genrecedit.edit.artifact import _batch_tensors

    return _batch_tensors(batch)


def test_load_with_reuse_reads_only_new_batch_files(tiny_model, tiny_codes, tmp_path, monkeypatch):
    """A follower loading the next version takes over the batches whose files it read already (the same linked
    file) and reads only the rest; the result equals a full load."""
    import genrecedit.edit.artifact as artifact_module

    art = _stack(tiny_model, tiny_codes, 4)
    art.save(tmp_path / "v1")
    first = EditArtifact.load(tmp_path / "v1", "h")
    nxt = art.copy()
    nxt.append(_new_batch(tiny_model, tiny_codes, 4))
    nxt.save(tmp_path / "v2")
    reads = []
    real = artifact_module.load_file
    monkeypatch.setattr(artifact_module, "load_file", lambda path: reads.append(path) or real(path))
    follower = EditArtifact.load(tmp_path / "v2", "h", reuse=first)
    assert [p for p in reads if "batch-" in p] == [str(tmp_path / "v2" / "batch-0004.safetensors")]
    assert all(follower.batches[j] is first.batches[j] for j in range(4))
    full = EditArtifact.load(tmp_path / "v2", "h")
    assert follower.batch_ids() == full.batch_ids()
    for p in range(4):
        assert torch.equal(follower.total_delta(p), full.total_delta(p))
        assert torch.equal(follower.key_stats[p], full.key_stats[p])
    # a version written without links (another writer, a copy) is read whole
    import shutil
    shutil.copytree(tmp_path / "v2", tmp_path / "copied")
    reads.clear()
    EditArtifact.load(tmp_path / "copied", "h", reuse=first)
    assert len([p for p in reads if "batch-" in p]) == 5
