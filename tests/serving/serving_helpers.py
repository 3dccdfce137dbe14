"""Small request helpers shared by the in-process (TestClient) and real-server (httpx) tests."""
from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from genrecedit.serving import create_app
from serving_run import new_item_title

API_KEY = "test-key-0123456789abcdef"


def key_file(folder: Path, key: str = API_KEY) -> Path:
    """A file holding ``key`` (``ServiceConfig.api_key_file``)."""
    path = Path(folder) / "api-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    return path


def api(service, key: str | None = API_KEY) -> TestClient:
    """An in-process HTTP client of ``service`` that sends ``key`` (None: no key) with every request."""
    return TestClient(create_app(service), headers={"X-API-Key": key} if key is not None else {})

HISTORIES = [[], ["i00"], ["i30", "i31", "i32"], ["i50", "i51", "i52", "i53", "i12"], ["i71", "i70"] * 12]


def outputs(client, histories: list[list[str]]) -> list[tuple[list[str], list[float]]]:
    """(item ids, scores) per history, one request at a time (a batch of one: comparable bit for bit)."""
    out = []
    for history in histories:
        r = client.post("/recommend", json={"history": history})
        assert r.status_code == 200, r.text
        body = r.json()
        out.append(([x["item_id"] for x in body["items"]], [x["score"] for x in body["items"]]))
    return out


def service_outputs(service, histories: list[list[str]]) -> list[tuple[list[str], list[float]]]:
    """(item ids, scores) per history from ``LiveService.recommend``, one history at a time (comparable bit for
    bit)."""
    out = []
    for history in histories:
        body = service.recommend(history)
        out.append(([x["item_id"] for x in body["items"]], [x["score"] for x in body["items"]]))
    return out


def new_items(tag: str, topics: range | list[int] = range(3)) -> list[dict]:
    return [{"item_id": f"{tag}-{t}", "text": new_item_title(t, f"{tag}{t}")} for t in topics]


def assert_recommendable(client, added: dict, min_share: float = 1.0) -> None:
    """At least ``min_share`` of an add response's items are in the top-k for their probe pseudo-history by the
    service's own report, and each of those is confirmed through /recommend (the others are confirmed absent)."""
    ranked = [item for item in added["items"] if item["rank"] is not None]
    assert len(ranked) >= min_share * len(added["items"]), f"recommendable: {[i['rank'] for i in added['items']]}"
    for item in added["items"]:
        r = client.post("/recommend", json={"history": item["probe_history"]})
        top = [x["item_id"] for x in r.json()["items"]]
        assert (item["item_id"] in top) == (item["rank"] is not None), (item, top)


def registry_state(client) -> tuple:
    """What a rejected request must not change: the batches on record and the serving model's version."""
    edits = client.get("/edits").json()
    return ([(b["batch_id"], b["status"], tuple(b["item_ids"])) for b in edits["batches"]], edits["model_version"],
            client.get("/health").json()["catalog_size"])
