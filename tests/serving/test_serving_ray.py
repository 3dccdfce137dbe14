"""The service as replicas on Ray Serve (``serving.replicas``): a local Ray instance, one Editor and two followers
behind Serve's HTTP proxy, the registry on a real PostgreSQL (pgserver). Through a real HTTP client: both replicas
answer, an add sent to either is made once by the Editor, both serve its version within a second and give the same
lists, the API key is checked by every replica, and a rollback is exact on both. Skipped, saying why, when Ray or
PostgreSQL cannot start here."""
from __future__ import annotations

import time

import pytest

from genrecedit.serving import ServiceConfig
from genrecedit.serving.process import free_port
from serving_helpers import API_KEY, HISTORIES, key_file, new_items, outputs
from serving_run import SERVICE_OVERRIDES

ray = pytest.importorskip("ray", reason="ray[serve] (the replicas extra) is not installed")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def serve_port():
    from ray import serve

    port = free_port()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    except Exception as err:  # noqa: BLE001 - no Ray on this machine: skip, saying why
        pytest.skip(f"a local Ray instance could not start: {type(err).__name__}: {err}")
    yield port
    serve.shutdown()
    ray.shutdown()


def _replicas(client, n: int, timeout: float) -> dict[str, dict]:
    """/health of each replica behind the proxy, until ``n`` different ones answered (Serve routes at random)."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < n and time.monotonic() < deadline:
        health = client.get("/health").json()
        seen[health["replica"]] = health
    return seen


def _all_at(client, names: set[str], version: int, timeout: float) -> float:
    """Seconds until every replica in ``names`` answered /health at ``version``."""
    start = time.monotonic()
    at: set[str] = set()
    while at != names:
        assert time.monotonic() - start < timeout, f"replicas at {version} after {timeout} s: {sorted(at)}"
        health = client.get("/health").json()
        if health["model_version"] >= version:
            at.add(health["replica"])
    return time.monotonic() - start


def test_two_replicas_share_one_registry_and_follow_every_change(serve_port, serving_run, pg_url, tmp_path):
    from ray import serve

    from genrecedit.serving.replicas import APP_NAME, replicated_app

    # uncapped: each replica's cap counts its own lists, and the replicas' lists are compared
    cfg = ServiceConfig(state_dir=tmp_path / "state", api_key_file=key_file(tmp_path), registry_url=pg_url,
                        sync_interval_s=0.05, exposure_cap=0.0)
    serve.run(replicated_app(serving_run, cfg, 2, SERVICE_OVERRIDES), name=APP_NAME, route_prefix="/")
    base = f"http://127.0.0.1:{serve_port}"
    try:
        with httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=120) as c:
            replicas = _replicas(c, 2, 30.0)
            assert len(replicas) == 2 and {h["role"] for h in replicas.values()} == {"follower"}
            assert {h["model_version"] for h in replicas.values()} == {0}
            before = outputs(c, HISTORIES)
            assert httpx.post(f"{base}/items", json={"items": new_items("x", [0])}).status_code == 401

            r = c.post("/items?wait=true", json={"items": new_items("ray", [0, 3])})
            assert r.status_code == 200, r.text
            added = r.json()
            assert _all_at(c, set(replicas), added["model_version"], 1.0) < 1.0
            after = [outputs(c, HISTORIES) for _ in range(4)]  # whichever replica answers: one model
            assert all(o == after[0] for o in after) and after[0] != before
            assert c.get("/items/ray-0").json()["batch_id"] == added["batch_id"]
            edits = c.get("/edits").json()
            assert [b["batch_id"] for b in edits["batches"]] == [added["batch_id"]]  # made once, by the Editor

            r = c.delete(f"/edits/{added['batch_id']}")
            assert r.status_code == 200 and r.json()["exact"], r.text
            assert _all_at(c, set(replicas), r.json()["model_version"], 1.0) < 1.0
            assert all(outputs(c, HISTORIES) == before for _ in range(4))
            assert c.post("/items?wait=true", json={"items": [{"item_id": "i00", "text": "t"}]}).status_code == 409
    finally:
        serve.delete(APP_NAME)
