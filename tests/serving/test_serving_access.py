"""Who may change the service and what a request may send, through the HTTP API (FastAPI TestClient) on the tiny
run: the API key on every mutating endpoint, strict request types, the item id pattern, the body size limit, the
offline docs, and paths taken against the run directory."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from genrecedit.errors import ConfigError
from genrecedit.serving import NewItem, ServiceConfig
from genrecedit.serving.access import API_KEY_ENV
from serving_helpers import API_KEY, api, key_file, new_items, registry_state

READ_ONLY = {("POST", "/recommend")}


def mutating_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the app that is not a read (GET/HEAD) and not /recommend, ids filled in."""
    out = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method not in ("GET", "HEAD") and (method, route.path) not in READ_ONLY:
                out.append((method, re.sub(r"\{[^}]+\}", "b000001", route.path)))
    return out


def test_every_mutating_endpoint_needs_the_key(client):
    routes = mutating_routes(client.app)
    assert ("POST", "/items") in routes and ("DELETE", "/edits/b000001") in routes
    added = client.post("/items?wait=true", json={"items": new_items("k", [0])})
    assert added.status_code == 200, added.text
    before = registry_state(client)
    for method, path in routes:
        for headers in ({"X-API-Key": ""}, {"X-API-Key": API_KEY[:-1] + "x"}, {"X-API-Key": API_KEY + "x"}):
            r = client.request(method, path, json={"items": new_items("n", [1])}, headers=headers)
            assert r.status_code == 401 and r.json()["detail"] == "wrong X-API-Key", (method, path, r.text)
            assert API_KEY not in r.text
        client.headers.pop("X-API-Key")
        try:
            r = client.request(method, path, json={"items": new_items("n", [1])})
        finally:
            client.headers["X-API-Key"] = API_KEY
        assert r.status_code == 401 and "missing X-API-Key" in r.json()["detail"], (method, path)
    assert registry_state(client) == before
    assert client.post("/recommend", json={"history": []}, headers={"X-API-Key": "wrong"}).status_code == 200


def test_without_a_configured_key_mutating_endpoints_refuse(open_service, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    service = open_service("s-nokey", api_key_file=None)
    with api(service, key=None) as c:
        before = registry_state(c)
        for method, path in mutating_routes(c.app):
            r = c.request(method, path, json={"items": new_items("n", [1])})
            assert r.status_code == 403 and API_KEY_ENV in r.json()["detail"], (method, path, r.text)
            assert "--insecure-no-auth" in r.json()["detail"] and "api_key_file" in r.json()["detail"]
        assert registry_state(c) == before
        assert c.post("/recommend", json={"history": ["i00"]}).status_code == 200

    monkeypatch.setenv(API_KEY_ENV, "from-the-environment-0123")
    with api(open_service("s-envkey", api_key_file=None), key="from-the-environment-0123") as c:
        assert c.post("/items?wait=true", json={"items": new_items("e", [2])}).status_code == 200
        assert c.post("/items", json={"items": new_items("e", [3])}, headers={"X-API-Key": API_KEY}).status_code == 401

    monkeypatch.delenv(API_KEY_ENV)
    with api(open_service("s-insecure", api_key_file=None, insecure_no_auth=True), key=None) as c:
        assert c.post("/items?wait=true", json={"items": new_items("i", [4])}).status_code == 200


def test_the_key_is_never_shown_and_a_weak_key_is_refused(open_service, tmp_path):
    cfg = ServiceConfig(api_key_file=key_file(tmp_path))
    assert "api_key" not in repr(cfg) and API_KEY not in repr(cfg)
    with api(open_service()) as c:
        assert API_KEY not in repr(c.app.state.auth) and API_KEY not in c.get("/openapi.json").text
    with pytest.raises(ConfigError, match="at least 16"):
        api(open_service("s-weak", api_key_file=key_file(tmp_path / "weak", "short")))
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        api(open_service("s-missing", api_key_file=tmp_path / "no-such-file"))


@pytest.mark.parametrize("body", [
    {"history": ["i00"], "k": "5"}, {"history": ["i00"], "k": True}, {"history": ["i00"], "k": 5.0},
    {"history": "i00"}, {"history": [0]}, {"history": ["i00"], "exclude_seen": "true"},
    {"history": ["i00"], "exclude_seen": 1},
])
def test_recommend_types_are_strict(client, body):
    r = client.post("/recommend", json=body)
    assert r.status_code == 422 and r.json()["error"] == "ValidationError", r.text


def test_k_is_bounded_by_the_beam_in_the_schema(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"]["properties"]["k"]
    bounds = next(s for s in schema["anyOf"] if s.get("type") == "integer")
    assert bounds["minimum"] == 1 and bounds["maximum"] == 10 and "beam width 10" in schema["description"]
    r = client.post("/recommend", json={"history": ["i00"], "k": 11})
    assert r.status_code == 422 and "k: Input should be less than or equal to 10" in r.json()["detail"]
    assert client.post("/recommend", json={"history": ["i00"], "k": 0}).status_code == 422
    assert len(client.post("/recommend", json={"history": ["i00"], "k": 10}).json()["items"]) == 10


@pytest.mark.parametrize("item_id", ["a/b", "..", "a..b", ".a", "a.", "a b", " a", "a\tb", "a\x00b", "a\nb", "é",
                                     "x" * 201, "", 5, None])
def test_item_ids_follow_the_documented_pattern(client, item_id):
    before = registry_state(client)
    r = client.post("/items", json={"items": [{"item_id": item_id, "text": "racing racing deluxe"}]})
    assert r.status_code == 422, r.text
    assert registry_state(client) == before


def test_valid_item_ids_and_the_pattern_in_the_schema(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["NewItemIn"]["properties"]["item_id"]
    assert schema["pattern"] == r"^[A-Za-z0-9_:@+~=-]+(?:\.[A-Za-z0-9_:@+~=-]+)*$" and schema["maxLength"] == 200
    ids = ["B00-X.v2", "sku:123@shop", "a_b+c~d=e", "x" * 200]
    r = client.post("/items?wait=true", json={"items": [{"item_id": i, "text": new_items("v", [n])[0]["text"]}
                                                       for n, i in enumerate(ids)]})
    assert r.status_code == 200, r.text
    assert [i["item_id"] for i in r.json()["items"]] == ids


def test_a_declared_body_over_the_limit_is_refused_unread(open_service):
    service = open_service("s-small", max_body_bytes=2_000)
    with api(service) as c:
        before = registry_state(c)
        big = {"items": [{"item_id": "big", "text": "racing " * 400}]}
        r = c.post("/items", json=big)
        assert r.status_code == 413 and r.json()["error"] == "PayloadTooLargeError"
        assert "at most 2000" in r.json()["detail"]
        chunks = iter([b'{"items": [{"item_id": "big", "text": "', *[b"racing " * 100] * 20, b'"}]}'])
        r = c.post("/items", content=chunks, headers={"content-type": "application/json"})  # no content-length
        assert r.status_code == 413 and "stopped reading" in r.json()["detail"]
        assert registry_state(c) == before
        assert c.post("/recommend", json={"history": ["i00"]}).status_code == 200


def test_docs_are_served_from_local_files(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text) + re.findall(r"url: ['\"]([^'\"]+)", page.text)
    assert urls and not [u for u in urls if re.match(r"(https?:)?//", u)], urls  # nothing from the network
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 100, url
    js = client.get("/docs-static/swagger-ui-bundle.js")
    assert "javascript" in js.headers["content-type"] and len(js.content) > 500_000


def test_relative_paths_are_taken_against_the_run_directory(open_service, serving_run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    service = open_service("unused", overrides=["cache_dir=.cache-rel"])
    try:
        assert service.embedding_cache == serving_run / ".cache-rel" / "embeddings"
        assert service.editor.cache_dir == serving_run / ".cache-rel" / "c0"
        cfg = ServiceConfig(state_dir=Path("state-rel"), api_key_file=Path("key")).resolved(serving_run)
        assert cfg.state_dir == serving_run / "state-rel" and cfg.api_key_file == serving_run / "key"
        assert ServiceConfig().resolved(serving_run).state_dir == serving_run / "service"
        service.add_items([NewItem("rel-1", "racing racing")])
        assert (serving_run / ".cache-rel" / "embeddings").is_dir()
        assert not (tmp_path / ".cache-rel" / "c0").exists()  # nothing the service wrote went to the CWD
    finally:
        shutil.rmtree(serving_run / ".cache-rel", ignore_errors=True)
