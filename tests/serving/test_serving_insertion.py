"""The service serves the run's adopted calibrated insertion (``config.insertion``): an added item enters the lists
of histories whose text matches it, exactly as the offline recipe ranks them; other lists stay the beam's."""
from __future__ import annotations

import numpy as np
import pytest

from genrecedit.coldstart.insertion import (NEW_FEATURES, RERANK_FEATURES, WARM_FEATURES, CalibratedInsertion,
                                            InsertionConfig, LogOdds)
from genrecedit.coldstart.prior import content_vectors, normalized
from genrecedit.errors import ConfigError
from genrecedit.serving.service import NewItem
from serving_helpers import api, new_items
from serving_run import TOPICS

NAME = "insertion-service-test.json"


def _fitted(width: int) -> CalibratedInsertion:
    """A proposal's log-odds (sim − 0.3) / 0.02, a beam item's its log-probability: a close text match (the added
    item's topic: cosine ≈ 0.5 under the hashing encoder) goes in front, a weak one (≤ 0.12) far below the tiny
    model's top items."""
    n_new, n_warm = len(NEW_FEATURES), len(WARM_FEATURES)
    new = LogOdds([0.3] + [0.0] * (n_new - 1), [0.02] + [1.0] * (n_new - 1), [1.0] + [0.0] * (n_new - 1), 0.0)
    warm = LogOdds([0.0] * n_warm, [1.0] * n_warm, [1.0] + [0.0] * (n_warm - 1), 0.0)
    return CalibratedInsertion(InsertionConfig(recent=1, candidates=3, bias=0.0, width=width), new, warm)


def _history(topic: int) -> list[str]:
    return [f"i{topic}{n}" for n in range(4)]


def _served_as_offline(service, k: int = 5):
    """Per topic's history: the items the service serves (checked to be the offline recipe's list), the encoded
    history and the beam's items."""
    snap = service.snapshot
    with api(service) as c:
        for t in range(len(TOPICS)):
            r = c.post("/recommend", json={"history": _history(t), "k": k})
            assert r.status_code == 200, r.text
            served = [x["item_id"] for x in r.json()["items"]]
            hist = snap.catalog.histories([_history(t)], service.max_history)
            beams = snap.recommender.recommend(hist, service.decode, snap.schedule)
            offline = service.insertion.apply(snap.catalog.embeddings, snap.catalog.codes,
                                              np.flatnonzero(~snap.catalog.warm), hist, beams, k)
            assert [snap.catalog.item_ids[i] for i in offline.items[0].tolist()] == served
            yield served, hist, [i for i in beams.items[0].tolist() if i >= 0]


def test_an_added_item_enters_matching_lists_as_the_offline_recipe_ranks_them(open_service, serving_run):
    _fitted(10).save(serving_run / NAME)
    service = open_service("s-insertion", ["insertion=" + NAME, "prior.enabled=true"], exposure_cases=0)
    assert service.insertion is not None and service.snapshot.prior is None  # the insertion replaces the prior
    with api(service) as c:
        added = c.post("/items?wait=true", json={"items": new_items("ins", [3])})
        assert added.status_code == 200, added.text
        new_id = added.json()["items"][0]["item_id"]

        def top(topic: int) -> list[str]:
            r = c.post("/recommend", json={"history": _history(topic), "k": 5})
            assert r.status_code == 200, r.text
            return [x["item_id"] for x in r.json()["items"]]

        assert top(3)[0] == new_id
        lists = {t: top(t) for t in range(len(TOPICS))}
    # elsewhere the text matches weakly: those lists are the (edited) beam's own, in its order
    snap = service.snapshot
    for t in range(len(TOPICS)):
        hist = snap.catalog.histories([_history(t)], service.max_history)
        beams = snap.recommender.recommend(hist, service.decode, snap.schedule)
        offline = service.insertion.apply(snap.catalog.embeddings, snap.catalog.codes,
                                          np.flatnonzero(~snap.catalog.warm), hist, beams, 5)
        assert [snap.catalog.item_ids[i] for i in offline.items[0].tolist()] == lists[t]  # the offline recipe's
        if t != 3:
            assert lists[t] == [snap.catalog.item_ids[i] for i in beams.items[0, :5].tolist()]


def test_a_missing_or_mismatched_insertion_is_refused_at_start(open_service, serving_run):
    with pytest.raises(ConfigError, match="does not exist"):
        open_service("s-missing", ["insertion=no-such-file.json"])
    _fitted(40).save(serving_run / "insertion-too-wide.json")
    with pytest.raises(ConfigError, match="decode.beam"):
        open_service("s-wide", ["insertion=insertion-too-wide.json"])



def test_a_reranking_insertion_orders_every_served_list_by_its_warm_model(open_service, serving_run):
    """Warm log-odds = 10 · the item's cosine to the history's last item: each served list is the beam's items in
    the order of that cosine, exactly as the offline recipe ranks them — also with no new item in the catalog."""
    n_new, n_warm = len(NEW_FEATURES), len(WARM_FEATURES) + len(RERANK_FEATURES)
    new = LogOdds([0.0] * n_new, [1.0] * n_new, [0.0] * n_new, 0.0)
    coef = [0.0] * n_warm
    coef[len(WARM_FEATURES)] = 10.0  # "sim"
    warm = LogOdds([0.0] * n_warm, [1.0] * n_warm, coef, 0.0)
    CalibratedInsertion(InsertionConfig(recent=1, candidates=3, bias=1e6, width=10, rerank=True), new,
                        warm).save(serving_run / "insertion-rerank.json")
    service = open_service("s-rerank", ["insertion=insertion-rerank.json"], exposure_cases=0)
    snap = service.snapshot
    unit = normalized(snap.catalog.embeddings)
    for served, hist, beam in _served_as_offline(service):
        sims = (unit[beam] @ content_vectors(unit, hist, 1)[0]).numpy()
        best = [beam[j] for j in np.argsort(-sims, kind="stable")[:5]]
        assert served == [snap.catalog.item_ids[i] for i in best]


def test_a_popularity_insertion_serves_the_counts_it_was_fitted_with(open_service, serving_run):
    """Warm log-odds = the beam item's log(1 + training count) as saved with the model: each served list is the
    beam's items by those counts (items the counts do not cover count 0), exactly as the offline recipe ranks them."""
    from genrecedit.coldstart.insertion import POPULARITY_FEATURES

    cfg = InsertionConfig(recent=1, candidates=3, bias=1e6, width=10, rerank=True, popularity=True)
    n_new = len(NEW_FEATURES)
    n_warm = len(WARM_FEATURES) + len(RERANK_FEATURES) + len(POPULARITY_FEATURES)
    coef = [0.0] * n_warm
    coef[len(WARM_FEATURES) + len(RERANK_FEATURES)] = 1.0  # "log_count"
    service = open_service("s-counts-probe", [], exposure_cases=0)
    n_items = len(service.snapshot.catalog.item_ids)
    rng = np.random.default_rng(0)
    counts = np.stack([rng.permutation(n_items // 2) * 3, np.zeros(n_items // 2, int)], 1)  # half the catalog
    CalibratedInsertion(cfg, LogOdds([0.0] * n_new, [1.0] * n_new, [0.0] * n_new, 0.0),
                        LogOdds([0.0] * n_warm, [1.0] * n_warm, coef, 0.0),
                        counts).save(serving_run / "insertion-counts.json")
    service = open_service("s-counts", ["insertion=insertion-counts.json"], exposure_cases=0)
    snap = service.snapshot
    np.testing.assert_array_equal(service.insertion.counts, counts)
    for served, _, beam in _served_as_offline(service):
        known = [counts[i, 0] if i < len(counts) else 0 for i in beam]
        best = [beam[j] for j in np.argsort(-np.asarray(known), kind="stable")[:5]]
        assert served == [snap.catalog.item_ids[i] for i in best]


def test_the_service_serves_the_insertion_through_its_exposure_cap(open_service, serving_run):
    """An insertion saved with a cap is served through one: the added item leads its topic's list only as often as
    the cap allows, counted over the lists served (not over the exposure estimate's), and health reports it."""
    from dataclasses import replace

    from genrecedit.coldstart.exposure import ExposureCap

    fitted = _fitted(10)
    CalibratedInsertion(replace(fitted.cfg, cap=0.1), fitted.new_odds,
                        fitted.warm_odds).save(serving_run / "insertion-capped.json")
    service = open_service("s-capped", ["insertion=insertion-capped.json"], exposure_cases=0, exposure_cap=None)
    assert service.cap is not None and service.cap.share == 0.1 and service.exposure_batcher.cap is None
    # a cap whose warm-up is short enough to bind within a few requests: half the lists after the first two
    service.cap = service.batcher.cap = ExposureCap(0.5, warmup=2)
    with api(service) as c:
        added = c.post("/items?wait=true", json={"items": new_items("capped", [3])})
        assert added.status_code == 200, added.text
        new_id = added.json()["items"][0]["item_id"]
        leads = []
        for _ in range(4):
            r = c.post("/recommend", json={"history": _history(3), "k": 5})
            assert r.status_code == 200, r.text
            leads.append(r.json()["items"][0]["item_id"] == new_id)
        health = c.get("/health").json()
    assert leads == [True, False, False, True]  # 1 of 1 (warm-up 2: ≤ 1), then ≤ 1 of 2, 1 of 3, 2 of 4
    assert health["exposure_cap"]["served"] == 4 and health["exposure_cap"]["blocked"] == 2


def test_with_an_adopted_insertion_text_edits_stay_stored_and_only_feedback_edits_fire(open_service, serving_run):
    """The run's text-only recipe is the insertion, which reads no edit: an added item's text edit is solved and
    stored (feedback replaces it, rollback restores it) but does not fire, so the beam is the unedited model's and
    the insertion serves the item; a feedback edit fires. ``text_edits=True`` fires the text edits as well."""
    from genrecedit.serving.service import Interaction

    _fitted(10).save(serving_run / NAME)
    service = open_service("s-no-text", ["insertion=" + NAME], exposure_cases=0)
    fired = open_service("s-text", ["insertion=" + NAME], exposure_cases=0, text_edits=True)
    assert not service.text_edits and fired.text_edits
    for s in (service, fired):
        s.add_items([NewItem(i["item_id"], i["text"]) for i in new_items("t", [3])])
    assert len(service.snapshot.artifact.batches) == len(fired.snapshot.artifact.batches) == 1
    assert service.snapshot.schedule is None and fired.snapshot.schedule is not None
    hist = service.snapshot.catalog.histories([_history(3)], service.max_history)
    plain = service.run.recommender.recommend(hist, service.decode)
    edited = service.snapshot.recommender.recommend(hist, service.decode, service.snapshot.schedule)
    np.testing.assert_array_equal(edited.items, plain.items)  # the unedited model's beam
    item = service.snapshot.catalog.item_ids[-1]
    service.add_feedback([Interaction(item, tuple(_history(3)))])
    assert service.snapshot.schedule is not None  # the feedback batch fires


def test_without_an_insertion_text_edits_fire(open_service):
    service = open_service("s-plain", exposure_cases=0)
    assert service.text_edits
    service.add_items([NewItem(i["item_id"], i["text"]) for i in new_items("p", [3])])
    assert service.snapshot.schedule is not None
