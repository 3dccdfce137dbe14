"""The service follows the run's recipe (its trigger) and says, per added item, how many users it reaches: the share
of top-10 lists of sampled validation histories (never test) that hold it, with a warning when it reaches no one or
too many. Through the HTTP API (FastAPI TestClient) on the tiny serving run."""
from __future__ import annotations


import numpy as np
import pytest

from genrecedit.runs.backbone import load_run
from genrecedit.serving import LiveService, ServiceConfig
from genrecedit.serving.batcher import Ranked
from genrecedit.serving.exposure import added_item_exposure, exposure_status, validation_histories
from serving_helpers import api, key_file, new_items
from no_test_split import without_test
from serving_run import SERVICE_OVERRIDES

ADD_KEYS = {"batch_id", "status", "model_version", "items", "n_requests", "layers", "efficacy", "timings_s"}
ITEM_KEYS = {"item_id", "sid", "n_histories", "probe_history", "rank"}


def test_status_and_the_estimate_on_given_lists():
    assert [exposure_status(x, 0.05) for x in (None, 0.0, 0.05, 0.06)] == [
        "active", "active_unreached", "active", "active_overexposed"]
    lists = [Ranked(np.array([7, 1, 2]), np.zeros(3)), Ranked(np.array([3, 9]), np.zeros(2)),
             Ranked(np.array([7, 9]), np.zeros(2)), Ranked(np.array([0]), np.zeros(1))]
    out = added_item_exposure(lambda snap, h, k: lists, None, np.array([7, 9, 8]), ["a", "b", "c"],
                              np.zeros((4, 3), np.int64), 10, 0.4)
    assert out["items"] == [{"id": "a", "exposure": 0.5, "status": "active_overexposed"},
                            {"id": "b", "exposure": 0.5, "status": "active_overexposed"},
                            {"id": "c", "exposure": 0.0, "status": "active_unreached"}]
    assert len(out["warnings"]) == 3 and "'c' reaches no one" in out["warnings"][2]
    assert out["estimate"] == {"cases": "valid", "n_histories": 4, "k": 10, "max_item_share": 0.4}
    none = added_item_exposure(lambda *a: pytest.fail("decoded nothing to decode"), None, np.array([7]), ["a"],
                               np.zeros((0, 3), np.int64), 10, 0.4)
    assert none == {"items": [{"id": "a", "exposure": None, "status": "active"}], "warnings": [], "estimate": None}


def test_an_add_answers_each_items_exposure_as_recommend_sees_it(open_service):
    service = open_service("s-exposure", exposure_cases=20)
    assert service.exposure_histories.shape == (20, service.max_history)
    with api(service) as c:
        r = c.post("/items?wait=true", json={"items": new_items("exp", [0, 3])})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body.keys() >= ADD_KEYS | {"warnings", "exposure_estimate"}
        assert body["exposure_estimate"] == {"cases": "valid", "n_histories": 20, "k": 10, "max_item_share": 0.05}
        lists = [[x["item_id"] for x in c.post("/recommend", json={"history": [
            service.snapshot.catalog.item_ids[i] for i in h if i >= 0], "k": 10}).json()["items"]]
            for h in service.exposure_histories]
        for item in body["items"]:
            assert item.keys() >= ITEM_KEYS | {"id", "exposure", "status"} and item["id"] == item["item_id"]
            assert 0.0 <= item["exposure"] <= 1.0
            # the same decoding as /recommend: the share of its top-10 lists for those very histories
            assert item["exposure"] == pytest.approx(np.mean([item["id"] in top for top in lists]))
            flagged = {0.0: "active_unreached"}.get(item["exposure"], "active_overexposed"
                                                    if item["exposure"] > 0.05 else "active")
            assert item["status"] == flagged
            assert any(f"'{item['id']}'" in w for w in body["warnings"]) == (flagged != "active")


def test_an_item_that_reaches_no_one_is_flagged(open_service, monkeypatch):
    service = open_service("s-unreached", exposure_cases=8)
    real = service._ranked

    def without_added(snap, histories, k, batcher=None):  # the lists as if the new items ranked below every other
        lists = real(snap, histories, k, batcher)
        return [Ranked(r.items[r.items < snap.catalog.n_base], r.scores[r.items < snap.catalog.n_base])
                for r in lists]
    monkeypatch.setattr(service, "_ranked", without_added)
    with api(service) as c:
        body = c.post("/items?wait=true", json={"items": new_items("lost", [1])}).json()
        assert body["status"] == "active" and c.get("/items/lost-1").status_code == 200  # served all the same
        assert [(i["id"], i["exposure"], i["status"]) for i in body["items"]] == [("lost-1", 0.0, "active_unreached")]
        assert len(body["warnings"]) == 1 and "'lost-1' reaches no one" in body["warnings"][0]

        def everywhere(snap, histories, k, batcher=None):  # the new item first in every list
            new = len(snap.catalog) - 1  # the newest catalog item: the one just added
            return [Ranked(np.r_[new, r.items[: k - 1]], np.r_[0.0, r.scores[: k - 1]])
                    for r in real(snap, histories, k, batcher)]
        monkeypatch.setattr(service, "_ranked", everywhere)
        body = c.post("/items?wait=true", json={"items": new_items("loud", [2])}).json()
        assert [(i["exposure"], i["status"]) for i in body["items"]] == [(1.0, "active_overexposed")]
        assert "'loud-2' is overexposed" in body["warnings"][0] and "100.0%" in body["warnings"][0]


def test_no_estimate_when_disabled(open_service):
    service = open_service("s-off", exposure_cases=0)
    with api(service) as c:
        body = c.post("/items?wait=true", json={"items": new_items("off", [4])}).json()
    assert body["warnings"] == [] and body["exposure_estimate"] is None
    assert [(i["exposure"], i["status"]) for i in body["items"]] == [(None, "active")]


def test_the_estimate_decodes_validation_histories_never_test(serving_run, tmp_path):
    run = load_run(serving_run, SERVICE_OVERRIDES)
    run = without_test(run)
    split = run.prepared.split
    service = LiveService(run, ServiceConfig(state_dir=tmp_path / "state", exposure_cases=12,
                                             api_key_file=key_file(tmp_path)))
    decoded: list[np.ndarray] = []
    real = service._ranked

    def spy(snap, histories, k, batcher=None):
        decoded.append(np.asarray(histories))
        return real(snap, histories, k, batcher)
    service._ranked = spy
    try:
        with api(service) as c:
            body = c.post("/items?wait=true", json={"items": new_items("v", [5])}).json()
    finally:
        service.close()
    assert body["exposure_estimate"]["n_histories"] == 12
    valid = {tuple(h) for h in split.valid.histories[:, -service.max_history:]}
    assert len(decoded) == 1 and decoded[0].shape == (12, service.max_history)
    assert all(tuple(h) in valid for h in decoded[0])
    expected = validation_histories(split, 12, run.config.eval.seed, service.max_history)
    assert np.array_equal(decoded[0], expected)
