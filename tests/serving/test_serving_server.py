"""The real server: ``genrecedit serve`` on loopback, driven with httpx.

- amazon2018-game: items first seen in its test period are added to a tiny model trained on the period before,
  become recommendable, and rolling the batches back gives the pre-edit outputs exactly (skipped without the data).
- a crash: ``kill -9`` while a large batch is being edited; on restart the registry, the catalog and the active
  edits are intact, the interrupted batch and its job are marked failed, and finished jobs still answer.
"""
from __future__ import annotations

import socket
import time

import numpy as np
import pandas as pd
import pytest

from genrecedit.serving.process import ServerProcess
from serving_helpers import HISTORIES, assert_recommendable, new_items, outputs, registry_state
from serving_run import SERVICE_OVERRIDES, SHARED_DATASETS, game_slice, train_tiny_run

UNCAPPED = ["--exposure-cap", "0"]


@pytest.fixture(scope="module")
def game(tmp_path_factory):
    game_dir = SHARED_DATASETS / "amazon2018-game"
    if not (game_dir / "amazon2018-game.inter.gz").is_file():
        pytest.skip(f"real dataset absent: {game_dir} (a developer's checkout has ../shared/datasets)")
    root = tmp_path_factory.mktemp("game")
    folder, cold = game_slice(game_dir, root / "data")
    run = train_tiny_run(folder, root / "run", root / "cache", ["tokenizer.codebook_size=32"])
    inter = pd.read_csv(folder / "game-slice.inter.gz", sep="\t", dtype=str)
    histories = [[], *[list(g.iloc[:, 1])[-8:] for _, g in list(inter.groupby(inter.columns[0]))[:4]]]
    return run, cold, histories, root


def test_game_cold_items_become_recommendable_and_roll_back_exactly(game):
    run, cold, histories, root = game
    assert len(cold) >= 8, "the game slice should offer test-period items"
    # the 1-epoch model is close to untrained: a small λ lets its few requests dominate the preservation term
    # uncapped (--exposure-cap 0): the cap is stateful, and this compares served lists across adds and rollbacks
    with ServerProcess(run, root / "state", ["edit.lam=1"], extra_args=UNCAPPED) as server:
        c = server.client
        assert all(c.get(f"/items/{x['item_id']}").status_code == 404 for x in cold)
        before = outputs(c, histories)
        r = c.post("/items?wait=true", json={"items": cold[:4]})
        assert r.status_code == 200, r.text
        first = r.json()
        assert_recommendable(c, first, min_share=0.75)
        after_first = outputs(c, histories)
        second = c.post("/items?wait=true", json={"items": cold[4:8]}).json()
        assert_recommendable(c, second, min_share=0.75)
        assert all(c.get(f"/items/{x['item_id']}").json()["warm"] is False for x in cold[:8])
        assert c.delete(f"/edits/{second['batch_id']}").json()["exact"]
        assert outputs(c, histories) == after_first
        c.delete(f"/edits/{first['batch_id']}")
        assert outputs(c, histories) == before
        m = c.get("/metrics").json()
        assert [e["kind"] for e in m["edits"]] == ["add", "add", "rollback", "rollback"]


def test_restart_after_kill_mid_edit(serving_run, tmp_path):
    # 40 pseudo-histories per item make the 200-item batch below take seconds: a window to kill the server in
    overrides = SERVICE_OVERRIDES + ["knowledge.histories_per_item=40"]
    server = ServerProcess(serving_run, tmp_path / "state", overrides, extra_args=UNCAPPED).start()
    try:
        c = server.client
        first = c.post("/items", json={"items": new_items("a")}, headers={"Idempotency-Key": "first"})
        assert first.status_code == 202, first.text
        finished = _wait_for(c, first.json()["job_id"])
        assert finished["state"] == "succeeded"
        added = finished["result"]
        assert_recommendable(c, added)
        probes = HISTORIES + [x["probe_history"] for x in added["items"]]
        before = outputs(c, probes)
        items_before = [c.get(f"/items/{x['item_id']}").json() for x in added["items"]]
        assert c.post("/items?wait=true", json={"items": new_items("a")}).status_code == 409
        state_before = registry_state(c)

        rng = np.random.default_rng(0)
        big = [{"item_id": f"z{i}", "text": " ".join(f"w{w}" for w in rng.integers(0, 500, 3))} for i in range(200)]
        job = c.post("/items", json={"items": big}, headers={"Idempotency-Key": "big"}).json()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batches = c.get("/edits").json()["batches"]
            if batches[-1]["status"] == "pending":
                break
            time.sleep(0.01)
        assert batches[-1]["status"] == "pending", "the large batch finished before it could be interrupted"
        assert c.get(f"/jobs/{job['job_id']}").json()["state"] == "running"
        server.kill()
    finally:
        server.stop()

    with ServerProcess(serving_run, tmp_path / "state", overrides, extra_args=UNCAPPED) as again:
        c = again.client
        assert c.get("/health").json()["interrupted_at_start"] == ["b000002"]
        assert registry_state(c)[1:] == state_before[1:]  # the model version and the catalog size, kept
        batches = c.get("/edits").json()["batches"]
        assert [(b["batch_id"], b["status"]) for b in batches] == [("b000001", "active"), ("b000002", "failed")]
        assert "interrupted" in batches[1]["error"]
        assert outputs(c, probes) == before
        assert [c.get(f"/items/{x['item_id']}").json() for x in added["items"]] == items_before
        assert c.get("/items/z0").status_code == 404
        interrupted = c.get(f"/jobs/{job['job_id']}").json()
        assert interrupted["state"] == "failed" and interrupted["batch_id"] == "b000002"
        assert "interrupted" in interrupted["error"]["detail"] and interrupted["finished_at"] is not None
        assert c.get("/health").json()["jobs_interrupted_at_start"] == [job["job_id"]]
        assert c.get(f"/jobs/{finished['job_id']}").json() == finished  # a finished job answers after a restart
        retry = c.post("/items", json={"items": new_items("a")}, headers={"Idempotency-Key": "first"})
        assert retry.status_code == 202 and retry.json() == finished  # ... and its key still names it
        assert c.post("/items?wait=true", json={"items": new_items("c", [5])}).status_code == 200


def _wait_for(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not finished in {timeout}s: {job}")


def test_a_chunked_body_over_the_limit_is_refused_before_it_ends(serving_run, tmp_path):
    """A body sent without Content-Length (chunked) is answered 413 once the limit is crossed, while the client has
    not finished sending; the API key appears nowhere in the server's log."""
    limit = 8 * 1024 * 1024  # ServiceConfig.max_body_bytes
    with ServerProcess(serving_run, tmp_path / "state", SERVICE_OVERRIDES) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"POST /items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\nX-API-Key: " + server.api_key.encode() + b"\r\n\r\n")
            chunk = b"x" * 65536
            sent = 0
            while sent <= limit + len(chunk):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            answer = b""  # the body has not ended (no last chunk): only an early answer comes back
            while not answer.endswith(b"}"):
                part = sock.recv(65536)
                if not part:
                    break
                answer += part
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"PayloadTooLargeError" in answer
        assert server.client.get("/edits").json()["batches"] == []
        assert server.client.post("/items", json={"items": new_items("x", [0])},
                                  headers={"X-API-Key": "wrong-key-0123456789"}).status_code == 401
        assert server.client.post("/items?wait=true", json={"items": new_items("x", [0])}).status_code == 200
    assert server.api_key not in server.log.read_text()
