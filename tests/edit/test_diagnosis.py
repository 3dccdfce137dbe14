"""knowledge_diagnosis: how edit requests sit against training on tokens (exact key matching, no model)."""
from __future__ import annotations

import json

import numpy as np

from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.edit.diagnosis import knowledge_diagnosis
from genrecedit.edit.knowledge import EditRequests, pseudo_histories, successor_histories

P = PAD_ITEM
# SIDs (P = 3) of items 0..9; 1..4 are warm, 7..9 cold
CODES = np.array([[3, 3, 3], [0, 0, 0], [1, 2, 3], [2, 0, 1], [1, 2, 4], [0, 1, 1], [0, 2, 2],
                  [1, 2, 5], [2, 0, 2], [1, 5, 0]])


def _train() -> CaseSet:
    """u0: 1 2 3; u1: 1 4. The history [_,_,1] is followed by 2 (codes 1 2 3) and by 4 (codes 1 2 4)."""
    return CaseSet(np.array([0, 0, 0, 1, 1]),
                   np.array([[P, P, P], [P, P, 1], [P, 1, 2], [P, P, P], [P, P, 1]]),
                   np.array([1, 2, 3, 1, 4]), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))


def _requests() -> EditRequests:
    """A: [_,_,1] -> 8 (2 0 2): a training history whose training targets start with 1, not 2.
    B: [_,_,1] -> 7 (1 2 5): agrees with training at 0 and 1, not at 2 (training says 3 and 4 after 1 2).
    C: [1,2,3] -> 9 (1 5 0) and D: [1,2,3] -> 7 (1 2 5): a history no training sample has."""
    return EditRequests(np.array([[P, P, 1], [P, P, 1], [1, 2, 3], [1, 2, 3]]), np.array([8, 7, 9, 7]),
                        np.full(4, -1))


def test_diagnosis_per_position_exact():
    out = knowledge_diagnosis(_requests(), CODES, _train(), [0, 1, 2])["by_position"]
    assert [r["position"] for r in out] == [0, 1, 2]
    assert all(r["n_requests"] == 4 for r in out)
    # p = 0: A and B sit on a training key; A asks 2 where training only says 1; A and B (one key) disagree;
    # C and D share a key but both ask 1: no conflict
    assert out[0] == {"position": 0, "n_requests": 4, "share_training_key": 0.5, "share_contradicts_training": 0.5,
                      "share_conflicting_keys": 0.5, "distinct_keys": 2}
    # p = 1: only B's key (prefix 1) is a training key, and training says 2 there too; C (5) and D (2) conflict
    assert out[1] == {"position": 1, "n_requests": 4, "share_training_key": 0.25, "share_contradicts_training": 0.0,
                      "share_conflicting_keys": 0.5, "distinct_keys": 3}
    # p = 2: B's key (prefix 1 2) is a training key where training says 3 or 4, never 5; every key distinct
    assert out[2] == {"position": 2, "n_requests": 4, "share_training_key": 0.25, "share_contradicts_training": 1.0,
                      "share_conflicting_keys": 0.0, "distinct_keys": 4}


def test_diagnosis_reports_only_the_asked_positions_and_handles_no_requests():
    out = knowledge_diagnosis(_requests(), CODES, _train(), [2])["by_position"]
    assert [r["position"] for r in out] == [2] and out[0]["share_contradicts_training"] == 1.0
    empty = EditRequests(np.zeros((0, 3), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    (row,) = knowledge_diagnosis(empty, CODES, _train(), [0])["by_position"]
    assert row == {"position": 0, "n_requests": 0, "share_training_key": 0.0, "share_contradicts_training": 0.0,
                   "share_conflicting_keys": 0.0, "distinct_keys": 0}


def _knowledge_train():
    """Three users over items 1..6 with distinct histories; each user's last item ends a history nobody has."""
    rows = [(0, [P, P, P], 1), (0, [P, P, 1], 2), (0, [P, 1, 2], 5), (1, [P, P, P], 3), (1, [P, P, 3], 5),
            (1, [P, 3, 5], 2), (1, [3, 5, 2], 4), (2, [P, P, P], 6), (2, [P, P, 6], 2), (2, [P, 6, 2], 5)]
    train = CaseSet(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                    np.arange(len(rows), dtype=np.float64))
    warm = np.zeros(len(CODES), bool)
    warm[train.targets] = True
    emb = np.array([[-1.0, 0.01 * i] for i in range(len(CODES))], np.float32)
    emb[5], emb[2], emb[7], emb[9] = [1.0, 0.0], [0.8, 0.6], [1.0, 0.1], [1.0, 0.11]
    return train, warm, emb


def test_pseudo_requests_are_training_keys_and_contradict_where_the_codes_differ():
    train, warm, emb = _knowledge_train()
    req = pseudo_histories(train, warm, emb, np.array([7, 9]), 3, 2)
    (row,) = knowledge_diagnosis(req, CODES, train, [0])["by_position"]
    assert row["share_training_key"] == 1.0
    # the copied history's training targets are exactly the neighbour (histories are unique here)
    expected = np.mean(CODES[req.items, 0] != CODES[train.targets[req.sources], 0])
    assert 0 < expected < 1 and row["share_contradicts_training"] == expected


def test_successor_requests_from_users_last_items_are_not_training_keys():
    train, warm, emb = _knowledge_train()
    req = successor_histories(train, warm, emb, np.array([7]), 2, 1)  # 5's two last-item occurrences
    assert req.sources.tolist() == [9, 2]
    (row,) = knowledge_diagnosis(req, CODES, train, [0])["by_position"]
    assert row["share_training_key"] == 0.0 and row["share_contradicts_training"] == 0.0


def test_edit_run_reports_the_diagnosis(tiny_run, tmp_path):
    from genrecedit.runs.backbone import load_run
    from genrecedit.runs.edit import build_requests, edit_run

    run = load_run(tiny_run, ["edit.lam=1.0", "knowledge.source=successor", "edit.positions=[1,2]"])
    items = run.prepared.split.cold_items()[:3]
    edit_run(run, tmp_path, items)
    saved = json.loads((tmp_path / "edit_report.json").read_text())["diagnosis"]
    expected = knowledge_diagnosis(build_requests(run, items), run.prepared.codes, run.prepared.split.train, [1, 2])
    assert saved == json.loads(json.dumps(expected))
    assert [r["position"] for r in saved["by_position"]] == [1, 2] and saved["by_position"][0]["n_requests"] > 0
