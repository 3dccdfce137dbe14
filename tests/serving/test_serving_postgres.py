"""The edit registry on PostgreSQL (``ServiceConfig.registry_url``) against a real server started by the
``pgserver`` package: the same records as SQLite, full-precision times, one job per idempotency key, and a service
whose adds, jobs, rollbacks and model version survive a restart. Skipped when pgserver cannot start a server."""
from __future__ import annotations

import time

import numpy as np
import pytest

from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.serving.registry import BatchItems, IdempotencyConflictError, Registry
from serving_helpers import HISTORIES, api, new_items, outputs

@pytest.fixture(params=["sqlite", "postgres"])
def registry(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    reg = Registry(tmp_path / "state", url)
    yield reg
    reg.close()


def _batch(batch_id: str, n: int = 2) -> BatchItems:
    rng = np.random.default_rng(len(batch_id))
    return BatchItems(batch_id, [f"{batch_id}-{i}" for i in range(n)], [f"text {i}" for i in range(n)],
                      rng.standard_normal((n, 8)).astype(np.float32), rng.integers(0, 9, (n, 4)))


def test_both_databases_keep_the_same_records(registry):
    registry.bind_base("base-hash")
    with pytest.raises(ArtifactMismatchError, match="belongs to base model"):
        registry.bind_base("other-hash")
    a, b = _batch("b000001"), _batch("b000002", 3)
    registry.add_pending(1, a)
    registry.activate("b000001", "artifacts/add-b000001", "d1", 5, {"edit": 0.5}, {"layers": [1]}, 1)
    registry.add_pending(registry.next_seq(), b)
    registry.activate("b000002", "artifacts/add-b000002", "d2", 7, {}, {}, 2)
    registry.roll_back("b000001", "artifacts/rollback-b000001", {"b000002": (b.sids + 1, "d2'")}, 3)
    with pytest.raises(ArtifactMismatchError, match="not above"):
        registry.roll_back("b000002", "x", {}, 3)
    assert registry.model_version() == 3 and registry.artifact_dir() == "artifacts/rollback-b000001"
    [(items, digest)] = registry.active_batches()
    assert items.batch_id == "b000002" and digest == "d2'" and items.item_ids == b.item_ids
    assert np.array_equal(items.embeddings, b.embeddings) and np.array_equal(items.sids, b.sids + 1)
    records = registry.records()
    assert [(r.batch_id, r.status) for r in records] == [("b000001", "rolled_back"), ("b000002", "active")]
    assert abs(records[0].created_at - time.time()) < 60 and records[0].timings == {"edit": 0.5}
    assert records[1].created_at > records[0].created_at  # times at full precision (not 4-byte floats)
    registry.add_pending(3, _batch("b000003"))
    assert registry.fail_interrupted() == ["b000003"]
    assert registry.counts() == {"pending": 0, "active": 1, "rolled_back": 1, "failed": 1, "item_rows": 7,
                                "feedback_rows": 0}


def test_both_databases_keep_one_job_per_key(registry):
    job, created = registry.create_job("job-1", "key", "sha-a", ["x"])
    assert created and job.state == "queued" and job.item_ids == ["x"]
    again, created = registry.create_job("job-2", "key", "sha-a", ["x"])
    assert not created and again.job_id == "job-1"
    with pytest.raises(IdempotencyConflictError):
        registry.create_job("job-3", "key", "sha-b", ["y"])
    registry.start_job("job-1")
    registry.finish_job("job-1", result={"batch_id": "b000001", "items": [{"exposure": 0.25}]})
    done = registry.job("job-1")
    assert done.state == "succeeded" and done.result["items"][0]["exposure"] == 0.25
    assert done.created_at <= done.started_at <= done.finished_at
    registry.create_job("job-4", "other", "sha-c", ["z"])
    registry.start_job("job-4")
    assert registry.fail_interrupted_jobs() == ["job-4"]
    assert registry.job("job-4").error["detail"].startswith("interrupted")
    assert registry.job_by_key("other").job_id == "job-4" and registry.job("nope") is None


def test_a_service_on_postgres_restores_everything(open_service, pg_url, tmp_path):
    first = open_service("state-pg", registry_url=pg_url)
    assert not (tmp_path / "state-pg" / "registry.sqlite").exists()  # the records are in PostgreSQL
    with api(first) as c:
        job = c.post("/items", json={"items": new_items("pg", [0, 3])}, headers={"Idempotency-Key": "pg"}).json()
        done = first.wait_job(job["job_id"])
        assert done["state"] == "succeeded", done
        second = c.post("/items?wait=true", json={"items": new_items("pq", [5])}).json()
        assert c.delete(f"/edits/{done['batch_id']}").json()["model_version"] == 3  # older: the later one recomputed
        before = outputs(c, HISTORIES + [second["items"][0]["probe_history"]])
    first.close()

    again = open_service("state-pg", registry_url=pg_url)
    with api(again) as c:
        assert again.snapshot.version == 3 and again.snapshot.active_batches == [second["batch_id"]]
        assert outputs(c, HISTORIES + [second["items"][0]["probe_history"]]) == before
        assert c.get(f"/jobs/{job['job_id']}").json() == again.job(job["job_id"]) == done
        assert c.post("/items", json={"items": new_items("pg", [0, 3])},
                      headers={"Idempotency-Key": "pg"}).json()["job_id"] == job["job_id"]


def test_a_bad_registry_url_is_a_clear_error_without_the_password(tmp_path):
    with pytest.raises(ConfigError, match="not a PostgreSQL URL") as err:
        Registry(tmp_path, "user=u password=s3cret-pw bogus=1")
    assert "s3cret-pw" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot connect") as err:
        Registry(tmp_path, "postgresql://user:s3cret-pw@127.0.0.1:1/db?connect_timeout=2")
    assert "s3cret-pw" not in str(err.value) and "postgresql://user@127.0.0.1:1/db" in str(err.value)


def test_feedback_on_postgres_restores_and_rolls_back(open_service, pg_url):
    first = open_service("state-pg", registry_url=pg_url, exposure_cases=0)
    with api(first) as c:
        added = c.post("/items?wait=true", json={"items": new_items("fb", [0, 3])}).json()
        item = added["items"][0]["item_id"]
        fed = c.post("/feedback", json={"interactions": [{"item_id": item, "history": ["i30", "i31"]},
                                                         {"item_id": item, "history": ["i32"]}]})
        assert fed.status_code == 200, fed.text
        kinds = [(b["batch_id"], b["kind"], b["item_ids"]) for b in c.get("/edits").json()["batches"]]
        assert kinds == [(added["batch_id"], "items", [item, added["items"][1]["item_id"]]),
                         (fed.json()["batch_id"], "feedback", [item])]
        before = outputs(c, HISTORIES + [["i30", "i31"]])
    first.close()

    again = open_service("state-pg", registry_url=pg_url, exposure_cases=0)
    with api(again) as c:
        assert again.snapshot.active_batches == [added["batch_id"], fed.json()["batch_id"]]
        assert outputs(c, HISTORIES + [["i30", "i31"]]) == before
        held = again.registry.active_feedback()
        assert [b.histories for b in held] == [[["i30", "i31"], ["i32"]]]
        answer = c.delete(f"/edits/{fed.json()['batch_id']}").json()
        assert answer["recomputed"] == [added["batch_id"]] and again.registry.active_feedback() == []
