"""Re-edit on feedback inside the service (``POST /feedback``): interactions with added items replace their
text-only edits exactly (``ColdItemEditor.replace_items``), accumulate, survive a restart, roll back to the text
edit, follow the catalog's indices when an older item batch is rolled back, and bad input writes nothing."""
from __future__ import annotations

import numpy as np
import pytest

from genrecedit.serving.service import Interaction, NewItem
from serving_helpers import HISTORIES, api, new_items, registry_state, service_outputs

FEEDBACK_HISTORIES = [["i30", "i31"], ["i32", "i33", "i34"], ["i35"]]


def _outputs(service, extra: list[list[str]] = ()) -> list[tuple[list[str], list[float]]]:
    return service_outputs(service, HISTORIES + FEEDBACK_HISTORIES + list(extra))


def _close(a, b) -> None:
    """The same lists and scores within float tolerance (a batch solved again: the same requests on the same stack)."""
    for (ia, sa), (ib, sb) in zip(a, b, strict=True):
        np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-4)
        assert ia == ib or np.allclose(sorted(sa), sorted(sb), atol=1e-4)


def _add(service, tag: str, topics=range(3)) -> dict:
    return service.add_items([NewItem(i["item_id"], i["text"]) for i in new_items(tag, topics)])


def _feedback(item: str, histories=FEEDBACK_HISTORIES) -> list[Interaction]:
    return [Interaction(item, tuple(h)) for h in histories]


def test_feedback_replaces_the_text_edit_and_restores(open_service):
    service = open_service(exposure_cases=20)
    first = _add(service, "a")
    second = _add(service, "b")
    item = first["items"][0]["item_id"]
    answer = service.add_feedback(_feedback(item))
    assert answer["kind"] == "feedback" and answer["batch_id"].startswith("f")
    assert answer["solved_again"] == [first["batch_id"], second["batch_id"]]
    assert answer["n_interactions"] == answer["n_requests"] == len(FEEDBACK_HISTORIES)
    [entry] = answer["items"]
    assert entry["item_id"] == item and entry["n_histories"] == 3 and entry["probe_history"] == FEEDBACK_HISTORIES[0]
    assert entry["status"].startswith("active") and entry["exposure"] is not None
    art = service.snapshot.artifact
    assert art.batch_ids() == (first["batch_id"], second["batch_id"], answer["batch_id"])
    # the text batch no longer teaches the item; the feedback batch teaches it, from the interactions only
    a, b, f = art.batches
    index = service.snapshot.catalog.index
    assert item not in a.item_ids and len(a.item_ids) == 2 and index[item] not in a.requests.items
    assert f.item_ids == [item] and (f.requests.items == index[item]).all() and (f.requests.sources == -1).all()
    assert service.snapshot.active_batches == list(art.batch_ids())
    records = {r.batch_id: r for r in service.registry.records()}
    assert records[answer["batch_id"]].kind == "feedback" and records[answer["batch_id"]].item_ids == [item]
    assert records[first["batch_id"]].kind == "items"
    outputs = _outputs(service)
    service.close()
    again = open_service(exposure_cases=0)  # the restart: the same stack from the registry and the artifact
    assert again.snapshot.active_batches == service.snapshot.active_batches
    assert _outputs(again) == outputs


def test_feedback_accumulates_and_rolls_back_to_the_earlier_edit(open_service):
    service = open_service(exposure_cases=0)
    added = _add(service, "a")
    item = added["items"][1]["item_id"]
    text_only = _outputs(service)
    once = service.add_feedback(_feedback(item, FEEDBACK_HISTORIES[:2]))
    after_once = _outputs(service)
    assert after_once != text_only  # the re-edit moves scores: the comparisons below can fail
    twice = service.add_feedback(_feedback(item, FEEDBACK_HISTORIES[2:]))
    assert twice["n_interactions"] == 1 and twice["n_requests"] == 3  # the earlier two and the new one
    assert twice["solved_again"] == [once["batch_id"]]  # the earlier feedback batch, now emptied
    assert service.snapshot.artifact.batches[1].item_ids == []
    # rolling the second feedback back gives the first one's model; rolling that back, the text edit's
    answer = service.roll_back(twice["batch_id"])
    assert not answer["exact"] and answer["recomputed"] == [once["batch_id"]]
    _close(_outputs(service), after_once)
    answer = service.roll_back(once["batch_id"])
    assert answer["recomputed"] == [added["batch_id"]]
    _close(_outputs(service), text_only)
    art = service.snapshot.artifact
    assert art.batch_ids() == (added["batch_id"],) and item in art.batches[0].item_ids


def test_rollback_below_feedback_reindexes_its_histories(open_service):
    """Rolling back an older item batch shifts the later items' catalog indices: the feedback batch above it is
    solved again from its stored item ids, as a service that never had the older batch solves it."""
    service, reference = open_service("a", exposure_cases=0), open_service("b", exposure_cases=0)
    older = _add(service, "x", [5])
    for s in (service, reference):
        kept = _add(s, "a")
    item = kept["items"][0]["item_id"]
    other = kept["items"][1]["item_id"]  # an added item in the histories: its index shifts with the rollback
    histories = [["i30", other], ["i31", "i32"]]
    before = _outputs(reference, histories)
    service.add_feedback(_feedback(item, histories))
    reference.add_feedback(_feedback(item, histories))
    assert _outputs(reference, histories) != before  # the feedback batch moves these scores
    answer = service.roll_back(older["batch_id"])
    assert len(answer["recomputed"]) == 2 and not answer["exact"]
    assert service.snapshot.catalog.item_ids == reference.snapshot.catalog.item_ids
    _close(_outputs(service, histories), _outputs(reference, histories))
    [f] = [b for b in service.snapshot.artifact.batches if b.batch_id.startswith("f")]
    [g] = [b for b in reference.snapshot.artifact.batches if b.batch_id.startswith("f")]
    np.testing.assert_array_equal(f.requests.histories, g.requests.histories)  # re-indexed: [.., index of other]


def test_item_batch_under_feedback_is_refused(open_service):
    service = open_service(exposure_cases=0)
    added = _add(service, "a")
    service.add_feedback(_feedback(added["items"][0]["item_id"]))
    with api(service) as client:
        before = registry_state(client)
        r = client.delete(f"/edits/{added['batch_id']}")
        assert r.status_code == 409 and r.json()["error"] == "BatchInUseError", r.text
        assert "roll it back first" in r.json()["detail"]
        assert registry_state(client) == before


@pytest.mark.parametrize("body, status, error", [
    ({"interactions": []}, 422, "EmptyInputError"),
    ({"interactions": [{"item_id": "i00", "history": ["i01"]}]}, 422, "InvalidRequestError"),  # a run's own item
    ({"interactions": [{"item_id": "nope", "history": ["i01"]}]}, 422, "UnknownItemError"),
    ({"interactions": [{"item_id": "ADDED", "history": []}]}, 422, "EmptyInputError"),
    ({"interactions": [{"item_id": "ADDED", "history": ["i01", "nope"]}]}, 422, "UnknownItemError"),
    ({"interactions": [{"item_id": "ADDED", "history": "i01"}]}, 422, "ValidationError"),
])
def test_bad_feedback_writes_nothing(open_service, body, status, error):
    service = open_service(exposure_cases=0, max_history_items=5)
    added = _add(service, "a")["items"][0]["item_id"]
    for it in body["interactions"]:
        it["item_id"] = added if it["item_id"] == "ADDED" else it["item_id"]
    with api(service) as client:
        before = registry_state(client)
        counts = service.registry.counts()
        r = client.post("/feedback", json=body)
        assert r.status_code == status and r.json()["error"] == error, r.text
        assert registry_state(client) == before and service.registry.counts() == counts


def test_feedback_needs_the_key(open_service):
    service = open_service(exposure_cases=0)
    added = _add(service, "a")["items"][0]["item_id"]
    r = api(service, key=None).post("/feedback", json={"interactions": [{"item_id": added, "history": ["i01"]}]})
    assert r.status_code == 401, r.text  # (no lifespan: this client does not close the service)
    with api(service) as client:
        r = client.post("/feedback", json={"interactions": [{"item_id": added, "history": ["i01"]}]})
        assert r.status_code == 200, r.text
        edits = client.get("/edits").json()
        assert edits["active"][-1] == r.json()["batch_id"]
        assert [b["kind"] for b in edits["batches"]] == ["items", "feedback"]


def test_follower_forwards_feedback(open_service):
    leader = open_service(exposure_cases=0)
    follower = open_service(leader=leader, name="follower", exposure_cases=0)
    added = _add(follower, "a")["items"][0]["item_id"]
    answer = follower.add_feedback(_feedback(added))
    assert follower.snapshot.version >= answer["model_version"]
    assert follower.snapshot.active_batches == leader.snapshot.active_batches
    assert _outputs(follower) == _outputs(leader)
