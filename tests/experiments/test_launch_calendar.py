"""bench/launch_calendar.py end to end on a tiny run: the smoke sizing of bench/configs/smoke.yaml, on synthetic data
where six new games are released one after another during the test period (the smoke's own base is an ML-100k run
that takes minutes to train)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

BENCH = Path(__file__).resolve().parents[2] / "bench"
GENRES = ["action", "comedy", "drama", "horror", "sport", "puzzle"]
N_WARM, DAYS = 60, 4


def write_releases(folder: Path, n_users: int = 120, per_user: int = 15, seed: int = 0) -> dict[str, float]:
    """Users drift through genres over times 0..10,000 and keep buying known games until 12,000; new game k (one per
    genre) is released at 10,000 + 300 k and bought by some users within 900 s of its release (so each game has
    cases on its first day and after it). Returns each new game's first interaction time."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines, first = ["user_id:token\titem_id:token\ttimestamp:float"], {}
    for u in range(n_users):
        g0 = int(rng.integers(0, len(GENRES)))
        times = np.sort(np.concatenate([rng.integers(0, 10_000, per_user), rng.integers(10_000, 12_000, 2)]))
        for j, t in enumerate(times):
            g = (g0 + j // 5) % len(GENRES)
            lines.append(f"u{u}\ti{g * (N_WARM // len(GENRES)) + int(rng.integers(0, N_WARM // len(GENRES)))}\t{t}")
        k = int(rng.integers(0, len(GENRES)))
        t = 10_000 + 300 * k + int(rng.integers(0, 900))
        first[f"i{N_WARM + k}"] = min(first.get(f"i{N_WARM + k}", np.inf), float(t))
        lines.append(f"u{u}\ti{N_WARM + k}\t{t}")
    (folder / "releases.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq"]
    for i in range(N_WARM + len(GENRES)):
        g = GENRES[i // (N_WARM // len(GENRES))] if i < N_WARM else GENRES[i - N_WARM]
        items.append(f"i{i}\t{g} game number {i % 7} {g} edition")
    (folder / "releases.item").write_text("\n".join(items) + "\n")
    return first


@pytest.fixture(scope="module")
def release_run(tmp_path_factory, tiny_overrides):
    from genrecedit.config import load_config
    from genrecedit.runs.backbone import train_backbone

    root = tmp_path_factory.mktemp("launch")
    first = write_releases(root / "releases")
    cfg = load_config(None, [f"dataset={root / 'releases'}", f"cache_dir={root / 'cache'}", *tiny_overrides,
                             "knowledge.source=pseudo", "edit.positions=[1, 2, 3]", "eval.trigger=prefix",
                             # 17 % of the interactions come after the first release: the test period starts before it
                             "split.valid_quantile=0.7", "split.test_quantile=0.8"])
    train_backbone(cfg, root / "run")
    return root / "run", first


def smoke_size(run_dir: Path, folder: Path) -> Path:
    """The smoke sizing of the launch calendar on the tiny run, with fewer days (six items), as a --size file."""
    cfg = yaml.safe_load((BENCH / "configs" / "smoke.yaml").read_text())["launch_calendar"]
    cfg["base"] = {"run_dir": str(run_dir), "config": "demo", "load_overrides": ["threads=1"]}
    cfg["days"] = DAYS
    path = Path(folder) / "size.yaml"
    path.write_text(yaml.safe_dump({"launch_calendar": cfg}))
    return path


def test_launch_calendar_scores_each_day_before_its_edit(release_run, tmp_path, monkeypatch):
    run_dir, first = release_run
    monkeypatch.syspath_prepend(str(BENCH))
    import launch_calendar as lc

    smoke_size(run_dir, tmp_path)

    # spies: every edit (which items, on how many batches) and every evaluation (which cases, with how many batches)
    events = []
    make_editor = lc.make_editor

    def spying_editor(run):
        editor = make_editor(run)
        edit = editor.edit

        def spy(requests, codes, item_ids, previous=None):
            events.append(("edit", sorted({item_ids[i] for i in requests.items}),
                           len(previous.batches) if previous else 0))
            return edit(requests, codes, item_ids, previous)

        editor.edit = spy
        return editor

    evaluate = lc.evaluate_detailed

    def spying_evaluate(run, cases, edits=None, groups=None, rerank=None):
        assert rerank is None  # no insertion asked for
        events.append(("eval", cases.timestamps.copy(), edits, sorted(groups or {})))
        return evaluate(run, cases, edits, groups, rerank)

    monkeypatch.setattr(lc, "make_editor", spying_editor)
    monkeypatch.setattr(lc, "evaluate_detailed", spying_evaluate)
    out = tmp_path / "out"
    data = lc.main(["--size", str(tmp_path / "size.yaml"), "--out", str(out)])

    rounds, edges = data["rounds"], np.asarray(data["calendar"]["edges"])
    assert data["calendar"]["mode"] == "equal-time slices"  # 2,000 s of test period: shorter than 4 days
    assert [r["day"] for r in rounds] == list(range(1, DAYS + 1)) and np.all(np.diff(edges) > 0)
    assert edges[0] == min(first.values())  # the calendar starts with the first release
    # every new game is edited once, on the day of its first interaction, days in order
    edited = {item: r["day"] for r in rounds for item in r["items"]}
    assert sorted(edited) == sorted(first)
    for item, day in edited.items():
        assert edges[day - 1] <= first[item] < edges[day]
    edit_days = [r["day"] for r in rounds if r["edit"]]
    assert len(edit_days) >= 3  # the releases spread over the calendar
    edits = [e for e in events if e[0] == "edit"]
    assert [e[1] for e in edits] == [sorted(rounds[d - 1]["items"]) for d in edit_days]
    assert [e[2] for e in edits] == list(range(len(edits)))  # each batch on top of all earlier ones

    # each day's cases are scored with the edits of earlier days only: the morning model
    for r in rounds:
        assert r["batches_in_morning_model"] == sum(d < r["day"] for d in edit_days)
        assert r["batches_after_edit"] == sum(d <= r["day"] for d in edit_days)
    mornings = [i for i, e in enumerate(events) if e[0] == "eval" and "today's items" in e[3]]
    for i in mornings:  # each one day's cases
        assert len(np.unique(lc.day_of(edges, events[i][1]))) == 1 and lc.day_of(edges, events[i][1][:1])[0] >= 0
    scored_days = [int(lc.day_of(edges, events[i][1][:1])[0]) + 1 for i in mornings]
    assert scored_days == [r["day"] for r in rounds if r["day_cases"]] and len(scored_days) >= 2
    for i, day in zip(mornings, scored_days):
        before = sum(1 for x in events[:i] if x[0] == "edit")
        assert before == sum(d < day for d in edit_days)  # the day's own batch is edited after its cases are scored
        assert (events[i][2] is None) == (before == 0)
    day1 = rounds[0]["morning"]
    assert day1["edited_ndcg10_all"] == day1["base_ndcg10_all"]  # nothing edited on the first morning
    assert day1["warm_drop"]["drop"] in (0.0, None)

    # the artifact on disk grows with every batch and never shrinks
    sizes = [r["artifact_bytes"] for r in rounds]
    assert all(b >= a for a, b in zip(sizes, sizes[1:])) and sizes[-1] > 0
    for prev, r in zip([0] + sizes, rounds):
        assert (r["artifact_bytes"] > prev) == bool(r["edit"])
    # day-1 items are tracked to the last day
    assert all("day 1" in r["after_edit"]["items_recall10_by_arrival_day"] for r in rounds)
    assert rounds[-1]["after_edit"]["items"]["day 1"]["n_cases"] > 0
    assert data["summary"]["day1_items_recall10_at_end"] is not None

    # the result files
    assert json.loads((out / "launch_calendar.json").read_text())["calendar"]["days"] == DAYS
    assert "| day |" in (out / "launch_calendar.md").read_text()
    assert (out / "launch_calendar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sys.modules.pop("launch_calendar", None)


def hand_set_insertion(path: Path) -> Path:
    """A calibrated insertion JSON whose models put every proposal above every beam item (constant log-odds +10 for
    a proposal, −10 for a beam item): whatever new item the insertion may see shows up in the lists, so a list
    that holds none of today's items says the insertion was not given them. (The tiny run's validation has no new
    item to fit one on.)"""
    from genrecedit.coldstart.insertion import NEW_FEATURES, WARM_FEATURES, CalibratedInsertion, InsertionConfig, \
        LogOdds

    def constant(n: int, value: float) -> LogOdds:
        return LogOdds([0.0] * n, [1.0] * n, [0.0] * n, value)

    CalibratedInsertion(InsertionConfig(recent=1, candidates=10, bias=0.0),
                        constant(len(NEW_FEATURES), 10.0), constant(len(WARM_FEATURES), -10.0)).save(path)
    return path


@pytest.fixture(scope="module")
def served_calendar(release_run, tmp_path_factory):
    """The calendar with ``--insertion`` (hand-set) and ``--reedit`` on the tiny run, with spies on every rerank
    (its new items and cut-off, the cases it ranked), every text edit and every re-edit (the requests)."""
    run_dir, first = release_run
    tmp = tmp_path_factory.mktemp("served")
    sys.path.insert(0, str(BENCH))
    try:
        import launch_calendar as lc

        smoke_size(run_dir, tmp)
        insertion = hand_set_insertion(tmp / "insertion.json")
        events = []
        make_editor, evaluate = lc.make_editor, lc.evaluate_detailed

        def spying_editor(run):
            editor = make_editor(run)
            edit, replace_items = editor.edit, editor.replace_items

            def spy_edit(requests, codes, item_ids, previous=None):
                events.append(("edit", requests, sorted(item_ids[i] for i in np.unique(requests.items))))
                return edit(requests, codes, item_ids, previous)

            def spy_replace(artifact, items, feedback, codes, item_ids):
                taught = np.concatenate([b.requests.items for b in artifact.batches])
                events.append(("replace", feedback, sorted(item_ids[i] for i in items), np.isin(items, taught).all()))
                return replace_items(artifact, items, feedback, codes, item_ids)

            editor.edit, editor.replace_items = spy_edit, spy_replace
            return editor

        def spying_evaluate(run, cases, edits=None, groups=None, rerank=None):
            events.append(("eval", cases, None if rerank is None else (rerank.new_items.copy(), rerank.cutoff),
                           sorted(groups or {})))
            return evaluate(run, cases, edits, groups, rerank)

        mp = pytest.MonkeyPatch()
        mp.setattr(lc, "make_editor", spying_editor)
        mp.setattr(lc, "evaluate_detailed", spying_evaluate)
        try:
            data = lc.main(["--size", str(tmp / "size.yaml"), "--out", str(tmp / "out"), "--insertion", str(insertion),
                            "--reedit"])
        finally:
            mp.undo()
        from genrecedit.runs.backbone import load_run

        split = load_run(run_dir, ["threads=1"]).prepared.split
        return data, events, split, lc
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("launch_calendar", None)


def test_insertion_serves_only_the_items_arrived_by_the_morning(served_calendar, release_run):
    data, events, split, lc = served_calendar
    _, first = release_run
    edges = np.asarray(data["calendar"]["edges"])
    index = {item: i for i, item in enumerate(split.item_ids)}
    first_idx = lc.first_seen(split)
    evals = [e for e in events if e[0] == "eval"]
    reranked = [e for e in evals if e[2] is not None]
    assert [e for e in evals if e[2] is None]  # the unedited reference: plain beams
    mornings = [e for e in reranked if "today's items" in e[3]]
    assert len(mornings) == sum(1 for r in data["rounds"] if r["day_cases"]) >= 2
    for _, cases, (new_items, cutoff), _ in mornings:
        day = int(lc.day_of(edges, cases.timestamps[:1])[0])
        assert cutoff == edges[day] and np.all(cases.timestamps >= cutoff)  # the morning of the cases' own day
        assert np.all(first_idx[new_items] < cutoff) and not split.warm[new_items].any()
        # exactly the cold items arrived by then: earlier days' new games are in, today's and later ones are not
        want = sorted(index[item] for item, t in first.items() if t < cutoff)
        assert sorted(set(new_items.tolist()) & {index[i] for i in first}) == want
    # after round d: the panels see the items arrived by day d + 1's morning
    after = [e for e in reranked if "today's items" not in e[3]]
    assert sorted({float(c) for _, _, (_, c), _ in after}) == sorted(edges[1:].tolist())
    for _, _, (new_items, cutoff), _ in after:
        assert np.all(first_idx[new_items] < cutoff)
    # the hand-set insertion puts whatever it is given on top: earlier days' items are always recommended (R@10 1),
    # today's only where the plain beams happen to decode them (≈ 0.07 on this run)
    rounds = [r for r in data["rounds"] if r["morning"]]
    assert all(r["morning"]["metrics"]["today's items"]["recall@10"] in (None,) or
               r["morning"]["metrics"]["today's items"]["recall@10"] < 0.5 for r in rounds)
    assert all(r["morning"]["metrics"]["earlier days' items"]["recall@10"] == 1.0 for r in rounds[1:])
    assert data["summary"]["day1_items_recall10_after_day1"] > 0
    assert data["rounds"][0]["morning"]["new_items_served"] == int(np.sum(~split.warm & (first_idx < edges[0])))


def test_reedit_learns_only_from_cases_before_the_day(served_calendar):
    data, events, split, lc = served_calendar
    edges = np.asarray(data["calendar"]["edges"])
    test = split.test
    rounds = data["rounds"]
    arrival = {item: r["day"] for r in rounds for item in r["items"]}
    reedits = [e for e in events if e[0] == "replace"]
    reedit_rounds = [r for r in rounds if r["reedit"]]
    assert len(reedits) == len([r for r in reedit_rounds if r["reedit"]["replaced"]]) >= 2
    seen = set()
    for (_, feedback, items, taught), r in zip(reedits, [r for r in reedit_rounds if r["reedit"]["replaced"]]):
        day = r["day"]
        assert taught and items == sorted(r["reedit"]["replaced"])
        assert all(arrival[i] < day for i in items) and not seen & set(items)  # arrived earlier, re-edited once
        seen |= set(items)
        assert sorted(split.item_ids[i] for i in np.unique(feedback.items)) == items
        # every request is an observed test case (its history and target) from before day d's morning
        for history, item in zip(feedback.histories, feedback.items):
            same = (test.targets == item) & (test.histories == history).all(1)
            assert same.any() and test.timestamps[same].min() < edges[day - 1]
        assert r["reedit"]["latest_feedback_time"] < edges[day - 1]
    assert data["summary"]["reedited_items"] == len(seen) + sum(len(r["reedit"]["appended"]) for r in reedit_rounds)
    # the text edits of a day are the day's items only, and today's items are never re-edited in their own round
    text = [e for e in events if e[0] == "edit" and not np.all(e[1].sources == -1)]
    assert [e[2] for e in text] == [sorted(r["items"]) for r in rounds if r["edit"]]
    for r in reedit_rounds:
        assert not set(r["reedit"]["replaced"] + r["reedit"]["appended"]) & set(r["items"])
    assert all(r["round_update_seconds"] is not None for r in rounds if r["edit"] or r["reedit"])
    sizes = [r["artifact_bytes"] for r in rounds]
    assert sizes[-1] > 0 and data["reedit"] and data["insertion"]["bias"] == 0.0


def test_no_text_edit_teaches_items_only_from_feedback(release_run, tmp_path, monkeypatch):
    """``--no-text-edit``: no item is edited from text on its day; re-edit appends each item's feedback batch (there
    is no text edit to replace)."""
    run_dir, _ = release_run
    monkeypatch.syspath_prepend(str(BENCH))
    import launch_calendar as lc

    calls = []
    make_editor = lc.make_editor

    def spying_editor(run):
        editor = make_editor(run)
        edit, replace_items = editor.edit, editor.replace_items
        editor.edit = lambda requests, *a, **k: calls.append(("edit", requests)) or edit(requests, *a, **k)
        editor.replace_items = lambda *a, **k: calls.append(("replace", None)) or replace_items(*a, **k)
        return editor

    monkeypatch.setattr(lc, "make_editor", spying_editor)
    data = lc.main(["--size", str(smoke_size(run_dir, tmp_path)), "--out", str(tmp_path / "out"), "--reedit",
                    "--no-text-edit"])
    assert data["text_edits"] is False
    assert all(r["edit"] is None and r["edited_items"] == 0 for r in data["rounds"])
    appended = [i for r in data["rounds"] if r["reedit"] for i in r["reedit"]["appended"]]
    assert appended and all(not r["reedit"]["replaced"] for r in data["rounds"] if r["reedit"])
    assert calls and all(kind == "edit" for kind, _ in calls)
    assert sum(len(req) for _, req in calls) == sum(r["reedit"]["n_requests"] for r in data["rounds"] if r["reedit"])


def test_a_service_locates_the_layer_map_at_start_on_the_runs_new_items(release_run, tmp_path, monkeypatch):
    """On a run whose catalog holds new items (this one's releases), a leader with an empty stack probes the layers
    at start on their text-only requests (pseudo-histories: training histories of warm items; none of the new
    items' interactions), and the first add stacks on that map without probing. ``probe_at_start=False``: the
    first add probes its own batch; a fixed layer policy needs no start stack."""
    from genrecedit.edit.editor import ColdItemEditor
    from genrecedit.serving import LiveService, NewItem, ServiceConfig

    run_dir, _ = release_run
    seen = []
    start_stack = ColdItemEditor.start_stack
    monkeypatch.setattr(ColdItemEditor, "start_stack",
                        lambda self, requests, codes: seen.append(requests) or start_stack(self, requests, codes))

    def open_(name: str, policy: str, **kw) -> LiveService:
        cfg = ServiceConfig(state_dir=tmp_path / name, exposure_cases=0, insecure_no_auth=True, **kw)
        service = LiveService.open(run_dir, cfg, ["threads=1", f"edit.layer_policy={policy}"])
        service.warm_up.result(timeout=120)
        return service

    service = open_("probed", "probe")
    try:
        [requests] = seen
        warm = service.base_catalog.warm
        assert len(requests) and not warm[requests.items].any() and (requests.sources >= 0).all()
        assert all(warm[h[h >= 0]].all() for h in requests.histories)  # training histories: warm items only
        layers = service._start_stack.layers
        monkeypatch.setattr(service.editor, "probe", lambda *a: pytest.fail("the first add probed again"))
        text = service.metadata.base(service.base_catalog.item_ids[0])["text"]
        added = service.add_items([NewItem("start-0", text + " (deluxe edition)")])
        assert added["layers"] == layers and service.snapshot.artifact.layers == layers
    finally:
        service.close()
    plain = open_("plain", "probe", probe_at_start=False)
    try:
        assert plain._start_stack is None and len(seen) == 1
        probed = []
        probe = plain.editor.probe
        monkeypatch.setattr(plain.editor, "probe", lambda *a: probed.append(1) or probe(*a))
        plain.add_items([NewItem("start-1", text + " (gold edition)")])
        assert probed == [1]
    finally:
        plain.close()
    fixed = open_("fixed", "fixed")
    try:
        assert fixed._start_stack is None and len(seen) == 1
    finally:
        fixed.close()
