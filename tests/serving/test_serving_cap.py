"""The service's exposure cap holds every list it serves, not only an adopted insertion's: a run without one serves its
edits and its content prior through the cap too (``ServiceConfig.exposure_cap``), on the tiny serving run."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from genrecedit.coldstart.exposure import ExposureCap
from genrecedit.errors import ConfigError
from genrecedit.serving import LiveService, NewItem, ServiceConfig
from serving_helpers import api, new_items
from serving_run import SERVICE_OVERRIDES, TOPICS

PRIOR = ["prior.enabled=true", "prior.scope=0", "prior.threshold=0.6", "prior.temperature=0.05",
         "prior.budget=0.5"]


def _history(topic: int) -> list[str]:
    return [f"i{topic}{n}" for n in range(4)]


def test_every_service_has_a_cap_at_its_bound_unless_turned_off(open_service, serving_run, tmp_path):
    plain = open_service("s-cap-default", exposure_cases=0, exposure_cap=None)
    assert plain.insertion is None and plain.cap is not None and plain.cap.share == 0.05
    assert plain.batcher.cap is plain.cap and plain.exposure_batcher.cap is None  # the estimate reads raw lists
    assert open_service("s-cap-share", exposure_cases=0, exposure_cap=None, max_item_share=0.2).cap.share == 0.2
    assert open_service("s-cap-set", exposure_cases=0, exposure_cap=0.3).cap.share == 0.3
    off = open_service("s-cap-off", exposure_cases=0, exposure_cap=0.0)
    assert off.cap is None and off.batcher.cap is None
    with api(plain) as c:
        assert c.get("/health").json()["exposure_cap"]["share"] == 0.05
    for bad in (-0.1, 1.5):
        state = tmp_path / f"s-bad-{bad}"
        with pytest.raises(ConfigError, match="exposure_cap"):
            LiveService.open(serving_run, ServiceConfig(state_dir=state, exposure_cap=bad, insecure_no_auth=True),
                             SERVICE_OVERRIDES)
        assert not state.exists()  # refused before anything is written


@pytest.mark.parametrize("overrides", [[], PRIOR], ids=["edits", "edits+prior"])
def test_a_cap_that_never_binds_serves_the_uncapped_lists(open_service, overrides):
    """Through the cap the beams are decoded as wide as the beam, then cut to k: with nothing blocked that must be
    the list served without it (a wider decode or a wider prior mixture must not reorder the head)."""
    service = open_service("s-cap-same-" + str(len(overrides)), overrides, exposure_cases=0)
    service.add_items([NewItem(i["item_id"], i["text"]) for i in new_items("same", [0, 3])])
    snap = service.snapshot
    assert (~snap.catalog.warm).any() and snap.schedule is not None
    assert (snap.prior is not None) == bool(overrides)
    hist = snap.catalog.histories([_history(t) for t in range(len(TOPICS)) for _ in range(3)] + [[]],
                                  service.max_history)
    for k in (3, 5, service.decode.k):
        cfg = replace(service.decode, k=k)
        plain = snap.rank(hist, cfg)
        cap = ExposureCap(1.0)
        capped = snap.rank(hist, cfg, cap)
        np.testing.assert_array_equal(capped.items.numpy(), plain.items.numpy())
        # the prior normalises its mixture over the list it is given: over the beam's width the scores move in the
        # fourth digit, the order not at all
        np.testing.assert_allclose(capped.scores.numpy(), plain.scores.numpy(), rtol=1e-3)
        np.testing.assert_array_equal(capped.sids.numpy(), plain.sids.numpy())
        assert cap.served == len(hist) and cap.blocked == 0


def test_the_cap_holds_an_added_item_the_prior_puts_first(open_service):
    """The prior ranks an added item first for its topic's histories; through a cap of half the lists (warm-up 2)
    it leads only as often as the cap allows, and when it is blocked the next entry moves up (k items still)."""
    service = open_service("s-cap-prior", PRIOR, exposure_cases=0)
    with api(service) as c:
        added = c.post("/items?wait=true", json={"items": new_items("capped", [3])})
        assert added.status_code == 200, added.text
        new_id = added.json()["items"][0]["item_id"]
        service.cap = service.batcher.cap = ExposureCap(0.5, warmup=2)
        served = [[x["item_id"] for x in c.post("/recommend", json={"history": _history(3), "k": 3}).json()["items"]]
                  for _ in range(4)]
        health = c.get("/health").json()
    uncapped = served[0]
    assert uncapped[0] == new_id
    assert [s[0] == new_id for s in served] == [True, False, False, True]
    for s in served[1:3]:
        assert s[:2] == uncapped[1:] and len(s) == 3 and new_id not in s  # moved up, refilled from below
    assert health["exposure_cap"]["served"] == 4 and health["exposure_cap"]["blocked"] == 2



def test_serve_passes_the_cap_and_the_text_edit_switch_on(monkeypatch, tmp_path):
    """``genrecedit serve --exposure-cap/--[no-]text-edits`` reach the service's config; a share outside [0, 1] is
    refused before anything is served."""
    import genrecedit.serving as serving
    from typer.testing import CliRunner

    from genrecedit.cli import app

    calls: list[dict] = []
    monkeypatch.setattr(serving, "serve", lambda run_dir, *a, **kw: calls.append(kw))
    base = ["serve", "--model", str(tmp_path), "--insecure-no-auth"]
    for extra, want in (([], (None, None)), (["--exposure-cap", "0.1", "--no-text-edits"], (0.1, False)),
                        (["--exposure-cap", "0", "--text-edits"], (0.0, True))):
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 0, result.output
        assert (calls[-1]["exposure_cap"], calls[-1]["text_edits"]) == want
    n = len(calls)
    assert CliRunner().invoke(app, base + ["--exposure-cap", "1.5"]).exit_code == 2 and len(calls) == n


def test_with_exclude_seen_a_seen_new_item_takes_no_share_of_the_cap(open_service):
    """``exclude_seen``: the user's seen items leave the list before the cap counts it. An added item that the
    prior ranks first for its own topic, and that the user has seen, is neither served nor counted."""
    service = open_service("s-cap-seen", PRIOR, exposure_cases=0)
    with api(service) as c:
        added = c.post("/items?wait=true", json={"items": new_items("seen", [3])})
        assert added.status_code == 200, added.text
        new_id = added.json()["items"][0]["item_id"]
        history = _history(3) + [new_id]
        snap = service.snapshot
        head = snap.rank(snap.catalog.histories([history], service.max_history), replace(service.decode, k=10))
        assert new_id in [snap.catalog.item_ids[i] for i in head.items[0].tolist() if i >= 0]  # it would count
        service.cap = service.batcher.cap = ExposureCap(0.5, warmup=2)
        for _ in range(3):
            r = c.post("/recommend", json={"history": history, "k": 5, "exclude_seen": True})
            assert r.status_code == 200, r.text
            served = [x["item_id"] for x in r.json()["items"]]
            assert len(served) == 5 and new_id not in served and not set(served) & set(history)
        r = c.post("/recommend", json={"history": _history(3), "k": 5})  # a user who has not seen it
        assert r.json()["items"][0]["item_id"] == new_id
    assert service.cap.counts.get(new_id) == 1 and service.cap.blocked == 0
