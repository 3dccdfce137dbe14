"""The service serves the run's content prior: an added item reaches users whose history matches its text, and not
users whose history does not, through the HTTP API on the tiny serving run (users there stay within one topic)."""
from __future__ import annotations

from serving_helpers import api, new_items
from serving_run import TOPICS, NOUNS, topic_title

PRIOR = ["prior.enabled=true", "prior.scope=0", "prior.threshold=0.6", "prior.temperature=0.05",
         "prior.budget=0.5"]


def _history(topic: int) -> list[str]:
    return [f"i{topic}{n}" for n in range(4)]


def test_an_added_item_reaches_matching_histories_only(open_service):
    service = open_service("s-prior", PRIOR, exposure_cases=0)
    assert (service.snapshot.prior is None) == bool(service.snapshot.catalog.warm.all())  # no new item yet: none
    with api(service) as c:
        added = c.post("/items?wait=true", json={"items": new_items("prior", [3])})
        assert added.status_code == 200, added.text
        new_id = added.json()["items"][0]["item_id"]
        assert service.snapshot.prior is not None and new_id in service.snapshot.catalog.item_ids

        def top(topic: int) -> list[str]:
            r = c.post("/recommend", json={"history": _history(topic), "k": 3})
            assert r.status_code == 200, r.text
            return [x["item_id"] for x in r.json()["items"]]

        # its topic, where the text matches the history, ranks it first; elsewhere the gate keeps its share to
        # e^((cos - θ) / τ) of the budget, far below any of the tiny model's top-3 items
        assert top(3)[0] == new_id
        assert all(new_id not in top(t) for t in range(len(TOPICS)) if t != 3)


def test_without_the_prior_the_snapshot_decodes_plain_beams(open_service):
    service = open_service("s-noprior", exposure_cases=0)
    assert service.snapshot.prior is None
    assert topic_title(0, 0) and NOUNS  # the fixture's vocabulary is what the prior test relies on


def test_adds_are_taught_with_the_runs_text_only_knowledge(open_service):
    """A run whose knowledge source is `successor` teaches added items with histories that end with a text-similar
    warm item (pseudo-histories would be training histories that preceded it)."""
    from genrecedit.serving.catalog import knowledge_for

    service = open_service("s-successor", ["knowledge.source=successor"], exposure_cases=0)
    with api(service) as c:
        r = c.post("/items?wait=true", json={"items": new_items("succ", [2])})
        assert r.status_code == 200, r.text
        assert r.json()["n_requests"] > 0
    snap = service.snapshot
    new = snap.catalog.batch_indices(snap.active_batches[-1])
    requests = knowledge_for(service.run.prepared.split.train, snap.catalog, new, service.run.config.knowledge)
    last = requests.histories[:, -1]
    assert len(requests) and snap.catalog.warm[last].all()
    # each history is a training history with its target appended: it ends with the warm item it was taken from
    train = service.run.prepared.split.train
    assert (train.targets[requests.sources] == last).all()
