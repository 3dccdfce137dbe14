"""The HTTP API in-process (FastAPI TestClient) on the tiny run: recommend, add, roll back, bad input."""
from __future__ import annotations

import numpy as np
from genrecedit.edit.artifact import EditArtifact
from genrecedit.serving.catalog import knowledge_for
from serving_helpers import HISTORIES, api, assert_recommendable, new_items, outputs, registry_state


def test_recommend_answers_and_validates(client):
    body = client.post("/recommend", json={"history": ["i30", "i31"], "k": 5}).json()
    assert len(body["items"]) == 5 and body["model_version"] == 0
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(client.get(f"/items/{x['item_id']}").status_code == 200 for x in body["items"])
    empty = client.post("/recommend", json={"history": []})  # a new user: answered, not refused
    assert empty.status_code == 200 and len(empty.json()["items"]) == 10
    long = client.post("/recommend", json={"history": ["i00"] * 50})  # only the last max_history are read
    assert long.json() == client.post("/recommend", json={"history": ["i00"] * 20}).json()

    r = client.post("/recommend", json={"history": ["i00", "nope", "nada"]})
    detail = r.json()["detail"]
    assert r.status_code == 422 and "'nope', 'nada'" in detail and "not in the catalog" in detail
    r = client.post("/recommend", json={})
    assert r.status_code == 422 and "history: Field required" in r.json()["detail"]
    assert client.post("/recommend", json={"history": [1, 2]}).status_code == 422
    assert client.post("/recommend", json={"history": ["i00"], "k": 11}).status_code == 422  # > beam
    r = client.post("/recommend", content=b'{"history": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
    assert client.post("/recommend", content=b"history=i00").status_code == 400
    assert client.get("/items/nope").status_code == 404
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/recommend", "/items", "/edits/{batch_id}"}


def test_bad_item_batches_write_nothing(client, open_service):
    before = registry_state(client)
    cases = [
        ({"items": [{"item_id": "i00", "text": "racing racing again"}]}, 409, "already in the catalog"),
        ({"items": [{"item_id": "x", "text": "racing"}, {"item_id": "x", "text": "puzzle"}]}, 409, "twice"),
        ({"items": [{"item_id": "x", "text": "   "}]}, 422, "'x' has an empty text"),
        ({"items": [{"item_id": "x", "text": "racing " * 1000}]}, 413, "at most"),
        ({"items": [{"item_id": f"x{i}", "text": "racing"} for i in range(257)]}, 413, "257 items"),
        ({"items": []}, 422, "no items"),
        ({"items": [{"item_id": "a/b", "text": "racing"}]}, 422, "no '/'"),
        ({"items": [{"item_id": "x"}]}, 422, "text: Field required"),
        ({"items": [{"item_id": "x", "text": "racing", "price": 3}]}, 422, "Extra inputs"),
    ]
    for body, status, message in cases:
        r = client.post("/items?wait=true", json=body)
        assert r.status_code == status and message in r.json()["detail"], (body, r.text)
    r = client.post("/items?wait=true", content=b'{"items": [{"item_id": "x", ',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert registry_state(client) == before
    assert client.delete("/edits/b999999").status_code == 404

    no_histories = open_service("state-empty", ["knowledge.histories_per_item=0"])
    with api(no_histories) as c:
        r = c.post("/items?wait=true", json={"items": new_items("lonely", [1])})
        assert r.status_code == 422 and "no pseudo-histories for item(s) 'lonely-1'" in r.json()["detail"]
        assert no_histories.registry.counts()["item_rows"] == 0


def test_add_then_roll_back_newest_is_exact(client):
    base = outputs(client, HISTORIES)
    first = client.post("/items?wait=true", json={"items": new_items("a")})
    assert first.status_code == 200, first.text
    added = first.json()
    assert added["model_version"] == 1 and [x["item_id"] for x in added["items"]] == ["a-0", "a-1", "a-2"]
    assert_recommendable(client, added)
    item = client.get("/items/a-1").json()
    assert item["batch_id"] == added["batch_id"] and not item["warm"] and item["sid"] == added["items"][1]["sid"]
    after_a = outputs(client, HISTORIES)

    second = client.post("/items?wait=true", json={"items": new_items("b", [4, 5])}).json()
    assert client.get("/edits").json()["active"] == [added["batch_id"], second["batch_id"]]
    r = client.delete(f"/edits/{second['batch_id']}").json()
    assert r["exact"] and r["recomputed"] == []
    assert outputs(client, HISTORIES) == after_a
    assert client.delete(f"/edits/{second['batch_id']}").status_code == 409  # already rolled back
    client.delete(f"/edits/{added['batch_id']}")
    assert outputs(client, HISTORIES) == base
    assert client.get("/items/a-1").status_code == 404
    statuses = {b["batch_id"]: b["status"] for b in client.get("/edits").json()["batches"]}
    assert statuses == {added["batch_id"]: "rolled_back", second["batch_id"]: "rolled_back"}
    again = client.post("/items?wait=true", json={"items": new_items("a")})  # a rolled-back id may be added again
    assert again.status_code == 200 and again.json()["items"][0]["sid"] == added["items"][0]["sid"]


def test_roll_back_older_batch_recomputes_later_ones(open_service):
    service = open_service()
    with api(service) as client:
        base = outputs(client, HISTORIES)
        a = client.post("/items?wait=true", json={"items": new_items("a", [0, 1])}).json()
        b = client.post("/items?wait=true", json={"items": new_items("b", [0, 2])}).json()
        r = client.delete(f"/edits/{a['batch_id']}").json()
        assert not r["exact"] and r["recomputed"] == [b["batch_id"]]
        assert client.get("/items/a-0").status_code == 404 and client.get("/items/b-0").status_code == 200

        # the recomputed batch equals B edited directly on the base model with the stack's (A's) layers
        snap = service.snapshot
        catalog = snap.catalog
        requests = knowledge_for(service.run.prepared.split.train, catalog, catalog.batch_indices(b["batch_id"]),
                                 service.run.config.knowledge)
        empty = EditArtifact(service.run.base_hash, list(snap.artifact.layers), [])
        direct, _ = service.editor.edit(requests, catalog.codes, catalog.item_ids, empty)
        for p, dw in direct.batches[0].delta_w.items():
            assert np.array_equal(dw.numpy(), snap.artifact.batches[0].delta_w[p].numpy())
        client.delete(f"/edits/{b['batch_id']}")
        assert outputs(client, HISTORIES) == base


def test_failed_edit_leaves_the_old_model_serving(client, monkeypatch):
    service = client.app.state.service
    client.post("/items?wait=true", json={"items": new_items("ok", [0])})
    before, state = outputs(client, HISTORIES), registry_state(client)

    def broken(*args, **kwargs):
        raise RuntimeError("solver diverged")

    monkeypatch.setattr(service.editor, "edit", broken)
    r = client.post("/items?wait=true", json={"items": new_items("bad", [1])})
    assert r.status_code == 500 and "solver diverged" in r.json()["detail"] and "keeps serving" in r.json()["detail"]
    assert outputs(client, HISTORIES) == before and client.get("/items/bad-1").status_code == 404
    batches = client.get("/edits").json()["batches"]
    assert batches[-1]["status"] == "failed" and "solver diverged" in batches[-1]["error"]
    assert registry_state(client)[1:] == state[1:]
    monkeypatch.undo()
    assert client.post("/items?wait=true", json={"items": new_items("bad", [1])}).status_code == 200


def test_metrics_and_health(client):
    client.post("/recommend", json={"history": ["i00"]})
    client.post("/recommend", json={"history": ["nope"]})
    client.post("/items?wait=true", json={"items": new_items("m", [2])})
    m = client.get("/metrics").json()
    rec = m["requests"]["POST /recommend"]
    assert rec["count"] == 2 and rec["by_status"] == {"200": 1, "422": 1} and rec["p99_ms"] >= rec["p50_ms"] > 0
    assert m["edits"][-1]["kind"] == "add" and m["edits"][-1]["timings_s"]["edit"] > 0
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["added_items"] == 1 and health["catalog_size"] == 65


def test_preserve_trigger_adds_items_without_moving_any_other_score(open_service):
    """The live service with ``trigger=preserve``: the added items become recommendable and every item that was in
    the catalog before keeps the score the unedited model gives it."""
    service = open_service("state-preserve", trigger="preserve")
    with api(service) as client:
        before = outputs(client, HISTORIES)
        added = client.post("/items?wait=true", json={"items": new_items("p")})
        assert added.status_code == 200, added.text
        assert_recommendable(client, added.json(), min_share=0.5)
        new_ids = {x["item_id"] for x in added.json()["items"]}
        after = outputs(client, HISTORIES)
        kept = 0
        for (ids0, scores0), (ids1, scores1) in zip(before, after):
            old = dict(zip(ids0, scores0))
            for item, score in zip(ids1, scores1):
                if item not in new_ids and item in old:
                    assert abs(score - old[item]) < 1e-5, (item, score, old[item])
                    kept += 1
        assert kept and any(set(ids) & new_ids for ids, _ in after)  # both kinds of items were checked
