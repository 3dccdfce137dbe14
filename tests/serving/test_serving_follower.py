"""Followers (``LiveService(..., leader=...)``): replicas that never edit, forward changes to the one leader and load
each new ``model_version`` from the shared registry and artifact store. Here the leader is an in-process service on
the same state directory (``serving.replicas`` puts it behind a Ray Serve handle)."""
from __future__ import annotations

import time

import pytest

from genrecedit.serving import LiveService, NewItem
from genrecedit.serving.service import StaleLoadError
from serving_helpers import HISTORIES, api, new_items, outputs


@pytest.fixture
def open_pair(open_service):
    """open_pair(**service_config) -> (leader, follower) over one state directory."""
    def open_(**kwargs) -> tuple[LiveService, LiveService]:
        leader = open_service(**kwargs)
        return leader, open_service(leader=leader, name="follower-1", **kwargs)
    return open_


def _until(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.01)
    return time.monotonic() - start


def test_an_add_through_a_follower_is_made_by_the_leader_and_served_by_both(open_pair):
    leader, follower = open_pair()
    assert follower.health()["role"] == "follower" and leader.health()["role"] == "leader"
    assert follower.editor is None and follower.encoder is None  # a follower neither edits nor embeds
    with api(leader) as lc, api(follower) as fc:
        before = outputs(fc, HISTORIES)
        r = fc.post("/items?wait=true", json={"items": new_items("f", [0, 3])})
        assert r.status_code == 200, r.text
        version = r.json()["model_version"]
        # read-your-writes: the follower answered only once it serves that version itself
        assert fc.get("/health").json()["model_version"] == version == leader.snapshot.version
        assert [b.batch_id for b in leader.registry.records()] == [r.json()["batch_id"]]
        assert outputs(fc, HISTORIES) == outputs(lc, HISTORIES) != before  # bit for bit the leader's model
        assert fc.get("/items/f-0").json()["batch_id"] == r.json()["batch_id"]
        # a rollback sent to the follower: exact on both
        r = fc.delete(f"/edits/{r.json()['batch_id']}")
        assert r.status_code == 200 and r.json()["exact"], r.text
        assert outputs(fc, HISTORIES) == before == outputs(lc, HISTORIES)
        assert fc.get("/items/f-0").status_code == 404


def test_a_follower_picks_up_the_leaders_changes_within_a_second(open_pair):
    leader, follower = open_pair()
    added = leader.add_items([NewItem(i["item_id"], i["text"]) for i in new_items("g", [1])])
    seconds = _until(lambda: follower.snapshot.version == added["model_version"], 1.0)
    assert seconds < 1.0
    with api(leader) as lc, api(follower) as fc:
        assert outputs(fc, HISTORIES) == outputs(lc, HISTORIES)
        job, _ = follower.submit_add([NewItem(i["item_id"], i["text"]) for i in new_items("h", [2])])
        assert fc.get(f"/jobs/{job['job_id']}").status_code == 200  # jobs are read from the shared registry
        done = follower.wait_job(job["job_id"])
        assert done["state"] == "succeeded" and follower.snapshot.version == done["result"]["model_version"]


def test_a_follower_refuses_bad_input_without_troubling_the_leader(open_pair):
    leader, follower = open_pair()
    with api(follower) as fc:
        assert fc.post("/items", json={"items": [{"item_id": "../x", "text": "t"}]}).status_code == 422
        assert fc.post("/items?wait=true", json={"items": [{"item_id": "i00", "text": "t"}]}).status_code == 409
    assert leader.registry.records() == [] and follower.snapshot.version == leader.snapshot.version == 0


def test_a_load_that_races_a_commit_is_dropped_and_tried_again(open_pair, monkeypatch):
    leader, follower = open_pair(sync_interval_s=10.0)  # no background poll: the test drives sync()
    added = leader.add_items([NewItem(i["item_id"], i["text"]) for i in new_items("r", [0])])
    reads = iter([added["model_version"], added["model_version"], added["model_version"] + 1])
    real = follower.registry.model_version
    monkeypatch.setattr(follower.registry, "model_version", lambda: next(reads, None) or real())
    with pytest.raises(StaleLoadError):  # the version moved between the start and the end of the load
        follower.sync()
    assert follower.snapshot.version == 0  # still serving what it had
    assert follower.sync() and follower.snapshot.version == added["model_version"]


def test_a_follower_does_not_fail_the_leaders_running_jobs_at_start(open_service):
    leader = open_service()
    job, _ = leader.submit_add([NewItem(i["item_id"], i["text"]) for i in new_items("s", [0])])
    follower = open_service(leader=leader, name="late")
    assert follower.health()["interrupted_at_start"] == [] and follower.health()["jobs_interrupted_at_start"] == []
    assert leader.wait_job(job["job_id"])["state"] == "succeeded"


def test_a_follower_reads_only_the_new_batch_of_each_version(open_pair, monkeypatch):
    """The leader's new version links the unchanged batch files; the follower takes over the batches it holds (the
    same objects, their digests not recomputed) and serves exactly the leader's model."""
    import genrecedit.serving.service as service_module

    leader, follower = open_pair(sync_interval_s=10.0)  # no background poll: the test drives sync()
    leader.add_items([NewItem(i["item_id"], i["text"]) for i in new_items("s", [0])])
    assert follower.sync()
    held = list(follower.snapshot.artifact.batches)
    hashed = []
    real = service_module.delta_fingerprint
    monkeypatch.setattr(service_module, "delta_fingerprint", lambda b: hashed.append(b.batch_id) or real(b))
    added = leader.add_items([NewItem(i["item_id"], i["text"]) for i in new_items("t", [1])])
    hashed.clear()  # the leader's own digest of the batch it committed
    assert follower.sync()
    batches = follower.snapshot.artifact.batches
    assert batches[0] is held[0] and len(batches) == 2
    assert hashed == [added["batch_id"]]  # only the new batch's ΔW was checked against the registry
    with api(leader) as lc, api(follower) as fc:
        assert outputs(fc, HISTORIES) == outputs(lc, HISTORIES)
