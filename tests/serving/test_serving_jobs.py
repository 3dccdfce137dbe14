"""Asynchronous adds through the HTTP API (FastAPI TestClient) on the tiny run: ``POST /items`` answers 202 with a
job, ``GET /jobs/{id}`` follows it to its result (the add's answer with each item's exposure), idempotency keys make
retries safe, bad input writes nothing, jobs and the model version live in the registry across restarts."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from genrecedit.errors import ArtifactMismatchError
from genrecedit.serving import NewItem
from genrecedit.serving.registry import BatchItems
from serving_helpers import api, new_items, registry_state


def wait_for(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        if r.json()["state"] in ("succeeded", "failed"):
            return r.json()
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def test_an_add_is_a_job_that_answers_its_result(client):
    r = client.post("/items", json={"items": new_items("j", [0, 3])}, headers={"Idempotency-Key": "launch-1"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("queued", "running", "succeeded") and job["idempotency_key"] == "launch-1"
    assert job["item_ids"] == ["j-0", "j-3"] and r.headers["location"] == f"/jobs/{job['job_id']}"
    done = wait_for(client, job["job_id"])
    assert done["state"] == "succeeded" and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert done["timings_s"].keys() == {"queued", "running", "total"}
    result = done["result"]
    assert result["batch_id"] == done["batch_id"] and result["model_version"] == 1
    assert [(i["item_id"], i["status"]) for i in result["items"]] == [
        (i["id"], i["status"]) for i in result["items"]]  # the per-item exposure report of the add
    assert all({"exposure", "status", "sid", "rank"} <= i.keys() for i in result["items"])
    assert "warnings" in result and "exposure_estimate" in result
    assert client.get("/items/j-3").json()["batch_id"] == done["batch_id"]

    retry = client.post("/items", json={"items": new_items("j", [0, 3])}, headers={"Idempotency-Key": "launch-1"})
    assert retry.status_code == 202 and retry.json() == done and retry.headers["idempotent-replayed"] == "true"
    other = client.post("/items", json={"items": new_items("k", [1])}, headers={"Idempotency-Key": "launch-1"})
    assert other.status_code == 409 and "already names job" in other.json()["detail"]
    assert client.get("/jobs/job-nope").status_code == 404
    drawn = client.post("/items", json={"items": new_items("d", [2])})  # no key: the service draws one
    assert drawn.status_code == 202 and drawn.json()["idempotency_key"].startswith("auto-")
    assert wait_for(client, drawn.json()["job_id"])["state"] == "succeeded"


def test_concurrent_retries_with_one_key_make_one_job(client):
    answers: list = []
    barrier = threading.Barrier(4)

    def send():
        barrier.wait()
        answers.append(client.post("/items", json={"items": new_items("c", [5])}, headers={"Idempotency-Key": "k"}))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.status_code for r in answers} == {202} and len({r.json()["job_id"] for r in answers}) == 1
    assert sorted(r.headers["idempotent-replayed"] for r in answers) == ["false", "true", "true", "true"]
    wait_for(client, answers[0].json()["job_id"])
    assert [b["item_ids"] for b in client.get("/edits").json()["batches"]] == [["c-5"]]


def test_bad_adds_are_refused_before_any_job_is_recorded(client):
    service = client.app.state.service
    client.post("/items?wait=true", json={"items": new_items("x", [0])})
    before = registry_state(client)
    jobs = service.registry._read("SELECT COUNT(*) FROM jobs")[0][0]
    for body, headers, status in [
        ({"items": new_items("x", [0])}, {}, 409),  # already in the catalog
        ({"items": [{"item_id": "a..b", "text": "racing"}]}, {}, 422),
        ({"items": []}, {}, 422),
        ({"items": new_items("y", [1])}, {"Idempotency-Key": "has space"}, 422),
        ({"items": new_items("y", [1])}, {"Idempotency-Key": "k" * 201}, 422),
    ]:
        r = client.post("/items", json=body, headers=headers)
        assert r.status_code == status, (body, headers, r.text)
    assert registry_state(client) == before
    assert service.registry._read("SELECT COUNT(*) FROM jobs")[0][0] == jobs


def test_a_failed_job_records_its_error_and_wait_answers_it(client, monkeypatch):
    service = client.app.state.service

    def broken(*args, **kwargs):
        raise RuntimeError("solver diverged")

    monkeypatch.setattr(service.editor, "edit", broken)
    job = client.post("/items", json={"items": new_items("f", [1])}).json()
    failed = wait_for(client, job["job_id"])
    assert failed["state"] == "failed" and failed["result"] is None and failed["batch_id"] == "b000001"
    assert failed["error"]["status_code"] == 500 and failed["error"]["error"] == "EditFailedError"
    assert "solver diverged" in failed["error"]["detail"]
    r = client.post("/items?wait=true", json={"items": new_items("g", [2])})
    assert r.status_code == 500 and "solver diverged" in r.json()["detail"] and r.json()["job_id"]
    assert client.get("/health").json()["model_version"] == 0


def test_jobs_and_the_model_version_survive_a_restart(open_service):
    first = open_service("state")
    with api(first) as c:
        done = wait_for(c, c.post("/items", json={"items": new_items("a", [0])},
                                  headers={"Idempotency-Key": "a"}).json()["job_id"])
        b = c.post("/items?wait=true", json={"items": new_items("b", [3])}).json()
        assert b["model_version"] == 2
        assert c.delete(f"/edits/{b['batch_id']}").json()["model_version"] == 3  # a rollback moves it forward
    first.close()

    second = open_service("state")
    assert second.snapshot.version == 3 and second.registry.model_version() == 3
    with api(second) as c:
        assert c.get(f"/jobs/{done['job_id']}").json() == done
        assert c.post("/recommend", json={"history": ["i00"]}).json()["model_version"] == 3
        assert c.post("/items?wait=true", json={"items": new_items("c", [5])}).json()["model_version"] == 4
        active = c.get("/edits").json()["active"]
        assert c.delete(f"/edits/{active[0]}").json()["model_version"] == 5  # an older batch: recomputed, still up
        registry = second.registry
        registry.add_pending(9, BatchItems("b000009", ["z"], ["racing"], np.ones((1, 4), np.float32),
                                           np.zeros((1, 4), np.int64)))
        with pytest.raises(ArtifactMismatchError, match="model version 5 is not above the recorded 5"):
            registry.activate("b000009", "x", "", 0, {}, {}, 5)  # the registry refuses to go back
        assert registry.model_version() == 5 and registry.records("b000009")[0].status == "pending"


def test_the_python_add_stays_blocking_and_keeps_the_version(open_service):
    service = open_service()
    out = service.add_items([NewItem("p-1", new_items("p", [1])[0]["text"])])
    assert out["status"] == "active" and out["model_version"] == service.registry.model_version() == 1


def test_the_leader_computes_c0_at_start_so_the_first_add_finds_it_cached(open_service, tmp_path):
    """C0 (the training keys' second moments the edit solves against) is computed on the edit worker when the leader
    opens, not by the first add; a follower and ``warm_c0=False`` leave it alone."""
    overrides = [f"cache_dir={tmp_path / 'fresh-cache'}"]  # no C0 cached for this run yet
    cold = open_service("cold", overrides, warm_c0=False)
    assert cold.warm_up is None
    first = cold.add_items([NewItem("c-0", "a cold first add")])
    assert first["c0_cached"] is False  # without the warm-up the first add computes it
    cold.close()

    overrides = [f"cache_dir={tmp_path / 'other-cache'}"]
    warm = open_service("warm", overrides)
    assert warm.warm_up.result(timeout=120) is True  # computed at start
    follower = open_service("warm", overrides, leader=warm, name="f")
    assert follower.warm_up is None
    added = warm.add_items([NewItem("w-0", "a warm first add")])
    assert added["c0_cached"] is True

