"""Re-edit on feedback (``ColdItemEditor.replace_items``) against its definition: editing from scratch the same
batches with the item's requests taken out of its batch and the feedback batch appended."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecedit.edit.artifact import EditArtifact
from genrecedit.edit.knowledge import EditRequests
from genrecedit.errors import ConfigError
from genrecedit.model.recommender import DecodeConfig
from genrecedit.runs.backbone import load_run
from genrecedit.runs.edit import build_requests, make_editor


@pytest.fixture(scope="module")
def stack(tiny_run):
    """Three text-only batches of the tiny run's cold items, edited one on top of the other."""
    run = load_run(tiny_run, ["edit.lam=1.0", "eval.trigger=prefix"])
    editor = make_editor(run, "prefix")
    codes, ids = run.prepared.codes, run.prepared.split.item_ids
    requests = build_requests(run)
    cold = np.unique(requests.items)
    assert len(cold) >= 3
    parts = [requests.subset(np.flatnonzero(np.isin(requests.items, c))) for c in np.array_split(cold, 3)]
    art = None
    for part in parts:
        art, _ = editor.edit(part, codes, ids, art)
    return run, editor, parts, art


def _feedback(run, item: int) -> EditRequests:
    """Observed-like knowledge for one item: a few training histories, each now ending in the item."""
    hist = run.prepared.split.train.histories[:6]
    return EditRequests(hist.copy(), np.full(len(hist), item, np.int64), np.full(len(hist), -1, np.int64))


def _top(run, art, histories):
    cfg = DecodeConfig(beam=10, k=10, batch_size=64, constrained=True)
    return run.recommender.recommend(histories, cfg, art.schedule("prefix", run.recommender.device))


@pytest.mark.parametrize("batch", [0, 1, 2])
def test_replacement_equals_editing_from_scratch_without_the_item(stack, batch):
    run, editor, parts, art = stack
    codes, ids = run.prepared.codes, run.prepared.split.item_ids
    item = int(np.unique(parts[batch].items)[0])
    feedback = _feedback(run, item)
    out, reports = editor.replace_items(art, np.array([item]), feedback, codes, ids)

    # from scratch, on the same layer map: B_1 .. B_n with the item's requests taken out, then the feedback batch
    scratch = EditArtifact(art.base_hash, list(art.layers), [], art.scheme)
    for j, part in enumerate(parts):
        keep = part.subset(np.flatnonzero(part.items != item))
        if len(keep):
            scratch, _ = editor.edit(keep, codes, ids, scratch)
    scratch, _ = editor.edit(feedback, codes, ids, scratch)

    assert [b.batch_id for b in out.batches[:3]] == [b.batch_id for b in art.batches]  # ids kept, F appended
    assert len(out.batches) == 4 and out.batches[-1].item_ids == [ids[item]]
    assert ids[item] not in out.batches[batch].item_ids and out.item_ids().count(ids[item]) == 1
    assert len(reports) == 3 - batch + 1
    for j in range(batch):  # below the item's batch: untouched, bit for bit
        for p, d in art.batches[j].delta_w.items():
            assert torch.equal(out.batches[j].delta_w[p], d)
    edited = [b for b in out.batches if b.delta_w]
    assert len(edited) == len(scratch.batches)
    for got, want in zip(edited, scratch.batches):
        assert got.item_ids == want.item_ids and sorted(got.delta_w) == sorted(want.delta_w)
        for p in got.delta_w:  # a solve's float tolerance: relative to the whole ΔW (the statistic differs by rounding)
            assert float((got.delta_w[p] - want.delta_w[p]).norm()) <= 1e-4 * float(want.delta_w[p].norm()) + 1e-9
    for p in range(len(art.layers)):
        if scratch.previous_cov(p) is not None:
            torch.testing.assert_close(out.previous_cov(p), scratch.previous_cov(p))
    histories = run.prepared.split.test.histories[:40]
    a, b = _top(run, out, histories), _top(run, scratch, histories)
    assert torch.equal(a.items, b.items)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    # the replacement is a copy: the original stack is unchanged
    assert ids[item] in art.batches[batch].item_ids and len(art.batches) == 3


def test_replacement_refuses_what_it_cannot_do(stack):
    run, editor, parts, art = stack
    codes, ids = run.prepared.codes, run.prepared.split.item_ids
    item = int(parts[0].items[0])
    with pytest.raises(ConfigError, match="not being replaced"):
        editor.replace_items(art, np.array([item]), _feedback(run, item + 1), codes, ids)
    warm = int(np.flatnonzero(run.prepared.split.warm)[0])
    with pytest.raises(ConfigError, match="not edited"):
        editor.replace_items(art, np.array([warm]), _feedback(run, warm), codes, ids)
