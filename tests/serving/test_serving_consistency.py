"""Requests during an edit are answered by the old or the new model, never a mix; concurrent requests are
micro-batched; restarts restore exactly; any sequence of adds and rollbacks undoes exactly (property)."""
from __future__ import annotations

import itertools
import shutil
import sqlite3
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrecedit.errors import ArtifactMismatchError
from genrecedit.serving import NewItem
from genrecedit.serving.registry import BatchItems
from serving_helpers import HISTORIES
from serving_run import new_item_title


def answers(service, histories=HISTORIES):
    out = []
    for h in histories:
        r = service.recommend(h)
        out.append(([x["item_id"] for x in r["items"]], [x["score"] for x in r["items"]]))
    return out


def items(tag: str, topics) -> list[NewItem]:
    return [NewItem(f"{tag}-{t}", new_item_title(t, f"{tag}{t}")) for t in topics]


def test_requests_during_an_edit_see_the_old_or_the_new_model(open_service):
    service = open_service()
    reference = {0: answers(service)}
    seen: list[tuple[int, int, list, list]] = []
    stop = threading.Event()

    def traffic():
        for i in itertools.cycle(range(len(HISTORIES))):
            if stop.is_set():
                return
            r = service.recommend(HISTORIES[i])
            seen.append((r["model_version"], i, [x["item_id"] for x in r["items"]], [x["score"] for x in r["items"]]))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        while len(seen) < 5:
            stop.wait(0.005)
        service.add_items(items("c", range(4)))
        n = len(seen)
        while len(seen) < n + 5:
            stop.wait(0.005)
    finally:
        stop.set()
        thread.join()
    reference[1] = answers(service)
    assert {v for v, *_ in seen} == {0, 1}
    for version, i, ids, scores in seen:
        assert (ids, scores) == reference[version][i]


def test_concurrent_requests_are_micro_batched(open_service):
    service = open_service(batch_window_ms=200.0)
    alone = answers(service)
    barrier = threading.Barrier(len(HISTORIES))
    results: dict[int, dict] = {}

    def one(i):
        barrier.wait()
        results[i] = service.recommend(HISTORIES[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(HISTORIES))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert service.metrics.to_dict()["micro_batches"]["max_size"] > 1
    for i, (ids, scores) in enumerate(alone):
        assert [x["item_id"] for x in results[i]["items"]] == ids
        np.testing.assert_allclose([x["score"] for x in results[i]["items"]], scores, rtol=1e-5)


def test_restart_restores_catalog_and_edits_exactly(open_service):
    first = open_service("state")
    a = first.add_items(items("a", [0, 1]))
    first.add_items(items("b", [0, 3]))
    first.roll_back(a["batch_id"])  # an older batch: b is recomputed
    first.add_items(items("c", [3]))
    probes = HISTORIES + [[first.item(i)["item_id"] for i in ("b-0", "c-3")]]
    before = answers(first, probes)
    snap = first.snapshot
    first.close()

    second = open_service("state")
    again = second.snapshot
    assert answers(second, probes) == before
    assert again.catalog.item_ids == snap.catalog.item_ids
    assert np.array_equal(again.catalog.codes, snap.catalog.codes)
    assert again.active_batches == snap.active_batches == ["b000002", "b000003"]
    for old, new in zip(snap.artifact.batches, again.artifact.batches):
        assert all(np.array_equal(old.delta_w[p].numpy(), new.delta_w[p].numpy()) for p in old.delta_w)


def test_restart_after_a_crash_mid_edit_and_refuses_inconsistent_state(open_service, tmp_path):
    first = open_service("state")
    first.add_items(items("a", [0]))
    # a crash between "batch validated" and "registry committed": a pending row and an orphan artifact version
    pending = BatchItems("b000002", ["z"], ["racing"], np.ones((1, 64), np.float32), np.zeros((1, 4), np.int64))
    first.registry.add_pending(2, pending)
    (tmp_path / "state" / "artifacts" / "add-b000002").mkdir()
    before = answers(first)
    first.close()

    second = open_service("state")
    assert second.interrupted == ["b000002"] and answers(second) == before
    assert second.registry.records("b000002")[0].status == "failed"
    assert sorted(p.name for p in (tmp_path / "state" / "artifacts").iterdir()) == ["add-b000001"]
    second.close()

    with sqlite3.connect(tmp_path / "state" / "registry.sqlite") as conn:
        conn.execute("UPDATE meta SET value = 'another-model' WHERE key = 'base_hash'")
    with pytest.raises(ArtifactMismatchError, match="belongs to base model"):
        open_service("state")
    with sqlite3.connect(tmp_path / "state" / "registry.sqlite") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'base_hash'", (second.run.base_hash,))
    shutil.rmtree(tmp_path / "state" / "artifacts")
    with pytest.raises(ArtifactMismatchError, match="not an edit artifact"):
        open_service("state")


_examples = itertools.count()
OPS = st.lists(st.one_of(st.tuples(st.just("add"), st.lists(st.integers(0, 7), min_size=1, max_size=2, unique=True)),
                         st.tuples(st.just("undo"), st.integers(0, 3))), min_size=1, max_size=4)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_adds_and_rollbacks_restart_and_undo_exactly(open_service, ops):
    """Invariants: a restart reproduces the current outputs bit for bit, and rolling back every active batch
    (newest first) restores the base model's outputs bit for bit, whatever happened before."""
    state = f"prop-{next(_examples)}"
    service = open_service(state)
    base = answers(service)
    for n, (op, arg) in enumerate(ops):
        if op == "add":
            service.add_items(items(f"p{n}", arg))
        elif service.snapshot.active_batches:
            active = service.snapshot.active_batches
            service.roll_back(active[arg % len(active)])
    now = answers(service)
    service.close()
    service = open_service(state)
    assert answers(service) == now
    for batch_id in reversed(service.snapshot.active_batches):
        service.roll_back(batch_id)
    assert answers(service) == base


def test_a_catalog_extended_by_many_batches_at_once_is_the_chain_of_single_extensions(open_service):
    """Restore replays the registry's batches with one tokenizer copy (``extended_many``): the same ids, SIDs
    (dedup tokens included), embeddings and duplicate refusal as one ``extended`` call per batch."""
    from genrecedit.errors import DuplicateItemError

    base = open_service().base_catalog
    rng = np.random.default_rng(0)
    d = base.embeddings.shape[1]
    near = base.embeddings[[0, 0, 1]] + rng.normal(0, 1e-4, (3, d)).astype(np.float32)  # shared SID prefixes
    batches = [BatchItems(f"b{j}", [f"n{j}-{k}" for k in range(len(e))], ["t"] * len(e), e, None)
               for j, e in enumerate([near[:2], near[2:], base.embeddings[[5, 5]]])]
    chained = base
    for b in batches:
        chained = chained.extended(b.batch_id, b.item_ids, b.texts, b.embeddings)
    many = base.extended_many(batches)
    assert many.item_ids == chained.item_ids and many.index == chained.index
    assert np.array_equal(many.codes, chained.codes) and np.array_equal(many.embeddings, chained.embeddings)
    assert [b.batch_id for b in many.batches] == [b.batch_id for b in chained.batches]
    assert all(np.array_equal(a.sids, b.sids) for a, b in zip(many.batches, chained.batches))
    assert len(base.batches) == 0 and len(base) == len(base.item_ids)  # the base catalog is untouched
    with pytest.raises(DuplicateItemError):
        base.extended_many(batches + [BatchItems("dup", ["n0-0"], ["t"], near[:1], None)])
