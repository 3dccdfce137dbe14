"""ColdItemEditor end to end on a tiny trained run: the edit is written, loadable, tied to its base model, and
sequential batches keep the layer map and solve against the earlier ones. Teacher-forced efficacy on hand-built
requests of a tiny untrained model."""
from __future__ import annotations

import copy

import numpy as np
import torch

from genrecedit.data.dataset import CaseSet
from genrecedit.edit.artifact import EditArtifact
from genrecedit.edit.editor import ColdItemEditor, EditConfig
from genrecedit.edit.knowledge import EditRequests
from genrecedit.edit.update import closed_form_update
from genrecedit.model.recommender import Recommender
from genrecedit.runs.backbone import load_run
from genrecedit.runs.edit import build_requests, edit_run, make_editor


def test_edit_run_writes_a_usable_artifact(tiny_run, tmp_path):
    run = load_run(tiny_run, ["edit.lam=1.0"])
    cold = run.prepared.split.cold_items()
    assert len(cold) > 0
    artifact, report = edit_run(run, tmp_path)
    assert (tmp_path / "edits" / "edits.json").exists() and (tmp_path / "edit_report.json").exists()
    assert report.n_items == len(np.unique(build_requests(run).items))
    assert all(0 <= layer < run.recommender.decoder.n_layers for layer in report.layers)
    # the layer probe (default policy): its table, spread and both choices are reported; the edit uses the resolved one
    n_pos, n_layers = run.recommender.layout.n_positions, run.recommender.decoder.n_layers
    assert np.asarray(report.probe["accuracy"]).shape == np.asarray(report.probe["stderr"]).shape == (n_pos, n_layers)
    assert report.layers == report.probe["best_layers"]
    assert report.probe["argmax_layers"] == [int(np.argmax(r)) for r in report.probe["accuracy"]]
    assert len(report.efficacy["after"]) == run.recommender.layout.n_positions
    # a small λ must lift teacher-forced efficacy of the requests above the unedited model's
    assert sum(report.efficacy["after"]) > sum(report.efficacy["before"])
    loaded = EditArtifact.load(tmp_path / "edits", base_hash=run.base_hash)
    for p in range(run.recommender.layout.n_positions):
        assert torch.equal(loaded.total_delta(p), artifact.total_delta(p))


def test_sequential_batches_keep_layers_and_stack(tiny_run):
    run = load_run(tiny_run, ["edit.lam=1.0"])
    cold = run.prepared.split.cold_items()
    first, second = cold[: len(cold) // 2], cold[len(cold) // 2 :]
    editor = make_editor(run)
    codes, ids = run.prepared.codes, run.prepared.split.item_ids
    art1, rep1 = editor.edit(build_requests(run, first), codes, ids)
    mem2 = editor.memorize(build_requests(run, second), codes, previous=art1)
    art2, rep2 = editor.solve(mem2, codes, ids)
    # batch 2 is solved against the edited model: its z (and so δ) include batch 1's ΔW k where that fires ...
    alone = editor.memorize(build_requests(run, second), codes)
    assert any(not torch.equal(torch.cat(mem2.deltas[p]), torch.cat(alone.deltas[p])) for _, p in mem2.sites)
    # ... and against the covariance batch 1 accumulated: ΔW_2 = the closed form with batch 1's K1 K1ᵀ added
    moved = []
    for layer, p in mem2.sites:
        k1 = torch.cat(mem2.keys[p])
        cov = k1.double().T @ k1.double()
        expected = closed_form_update(k1, torch.cat(mem2.deltas[p]), mem2.c0[(layer, p)], editor.lam(p),
                                      art1.previous_cov(p), cov)
        # ΔW kept in float32 (the precision the decoder applies it in)
        assert art2.batches[1].delta_w[p].dtype == torch.float32
        torch.testing.assert_close(art2.batches[1].delta_w[p], expected.float())
        # one accumulated statistic: batch 1's plus batch 2's K1 K1ᵀ; no covariance kept per batch
        torch.testing.assert_close(art2.previous_cov(p), art1.previous_cov(p) + cov)
        assert not art2.batches[1].key_cov
        # the keys replayed from the batch's stored requests give its covariance again
        torch.testing.assert_close(editor.key_covariance(art2.batches[1], art2.layers, codes)[p], cov)
        without = closed_form_update(k1, torch.cat(mem2.deltas[p]), mem2.c0[(layer, p)], editor.lam(p), None, cov)
        moved.append(not torch.allclose(art2.batches[1].delta_w[p].double(), without, rtol=1e-5, atol=1e-6))
    assert any(moved)  # (a position whose δ are all 0 has ΔW = 0 either way)
    assert rep2.layers == rep1.layers and rep2.probe is None  # l_p fixed after the first batch
    assert len(art2.batches) == 2 and len(art1.batches) == 1  # the previous artifact is not mutated
    for p in range(run.recommender.layout.n_positions):
        expected = (art1.batches[0].delta_w[p] + art2.batches[1].delta_w[p]).float()
        torch.testing.assert_close(art2.total_delta(p), expected)
        assert art2.previous_cov(p) is not None
    back, removed = editor.remove_newest(art2, codes)
    assert removed.batch_id == art2.batches[1].batch_id and len(art2.batches) == 2  # a copy: art2 kept
    for p in range(run.recommender.layout.n_positions):
        assert torch.equal(back.total_delta(p), art1.total_delta(p))  # bit for bit
        if art1.previous_cov(p) is not None:  # the statistic within float64 rounding
            torch.testing.assert_close(back.previous_cov(p), art1.previous_cov(p), rtol=1e-12, atol=1e-9)
    art2.remove_newest()  # without the batch's covariance: outputs exact, the statistic unknown until rebuilt
    assert not art2.stats_known
    for p in range(run.recommender.layout.n_positions):
        assert torch.equal(art2.total_delta(p), art1.total_delta(p))
    rebuilt = editor.rebuild_key_stats(art2, codes)
    for p in range(run.recommender.layout.n_positions):
        if art1.previous_cov(p) is not None:
            torch.testing.assert_close(rebuilt.previous_cov(p), art1.previous_cov(p))


def test_positions_subset_edits_only_those_positions(tiny_run):
    run = load_run(tiny_run, ["edit.lam=1.0", "edit.positions=[1,2]"])
    editor = make_editor(run)
    artifact, report = editor.edit(build_requests(run), run.prepared.codes, run.prepared.split.item_ids)
    assert sorted(artifact.batches[0].delta_w) == [1, 2]
    schedule = artifact.schedule()
    assert schedule(0) is None and schedule(3) is None and schedule(1) is not None
    assert report.converged[0] == 0 and report.converged[3] == 0
    # the unedited positions' efficacy is the base model's
    assert report.efficacy["after"][0] == report.efficacy["before"][0]


def test_positions_outside_the_sid_are_refused(tiny_run):
    import pytest

    from genrecedit.errors import ConfigError

    run = load_run(tiny_run, ["edit.positions=[7]"])
    with pytest.raises(ConfigError, match="edit.positions"):
        make_editor(run).edit(build_requests(run), run.prepared.codes, run.prepared.split.item_ids)


def test_observed_knowledge_and_selection_split_the_validation_period(tiny_run):
    import numpy as np

    from genrecedit.edit.knowledge import case_histories
    from genrecedit.runs.selection import validation_midpoint
    from genrecedit.runs.evaluate import evaluation_cases

    selecting = load_run(tiny_run, ["knowledge.source=observed", "eval.cases=valid",
                                    "knowledge.histories_per_item=100"])
    split = selecting.prepared.split
    mid = validation_midpoint(split)
    cases = evaluation_cases(selecting)
    assert len(cases) > 0 and (cases.timestamps >= mid).all()
    first_half = split.valid.subset(np.flatnonzero(split.valid.timestamps < mid))
    items = np.unique(split.valid.targets)  # any items: the tiny run has few cold ones in validation
    expected = case_histories(first_half, items, 100)
    got = build_requests(selecting, items)
    assert len(expected) > 0
    assert np.array_equal(got.items, expected.items) and np.array_equal(got.histories, expected.histories)
    # evaluating on test, the whole validation period is knowledge
    testing = load_run(tiny_run, ["knowledge.source=observed", "knowledge.histories_per_item=100"])
    assert len(build_requests(testing, items)) == len(case_histories(split.valid, items, 100)) > len(expected)
    assert len(evaluation_cases(testing)) == len(split.test)


def test_probe_gate_is_saved_and_only_lets_request_like_keys_through(tiny_run, tmp_path):
    from genrecedit.edit.keys import collect_keys

    run = load_run(tiny_run, ["edit.lam=1.0", "edit.gate_fpr=0.1"])
    artifact, report = edit_run(run, tmp_path)
    gates = artifact.batches[0].gates
    assert sorted(gates) == list(range(run.recommender.layout.n_positions))
    loaded = EditArtifact.load(tmp_path / "edits", base_hash=run.base_hash)
    codes, train = run.prepared.codes, run.prepared.split.train
    requests = build_requests(run)
    for p, gate in gates.items():
        torch.testing.assert_close(loaded.batches[0].gates[p].weight, gate.weight)
        site = (artifact.layers[p], p)
        req_keys = collect_keys(run.recommender.decoder, run.recommender.layout, requests.histories,
                                codes[requests.items], codes, [site])[site]
        train_keys = collect_keys(run.recommender.decoder, run.recommender.layout, train.histories,
                                  codes[train.targets], codes, [site])[site]
        # the gate opens for the edit's own keys far more often than for training keys
        assert gate(req_keys).float().mean() > gate(train_keys).float().mean()
    schedule = artifact.schedule()
    assert all(e.gate is not None for e in schedule(1).edits)


def test_lam_scale_gives_each_position_its_own_lambda(tiny_run):
    """A position's ΔW with λ·s_p equals the ΔW of a plain edit at that λ (the solves are per position)."""
    import pytest

    from genrecedit.errors import ConfigError

    plain = load_run(tiny_run, ["edit.lam=1.0"])
    codes, ids = plain.prepared.codes, plain.prepared.split.item_ids
    requests = build_requests(plain)
    ref, _ = make_editor(plain).edit(requests, codes, ids)
    n_pos = plain.recommender.layout.n_positions
    # scale the position with the largest update (some positions may need none on the tiny run)
    target = max(range(n_pos), key=lambda p: float(ref.batches[0].delta_w[p].norm()))
    assert ref.batches[0].delta_w[target].norm() > 0
    scale = [1.0] * n_pos
    scale[target] = 1e4
    got, _ = make_editor(load_run(tiny_run, ["edit.lam=1.0", f"edit.lam_scale={scale}"])).edit(requests, codes, ids)
    strong, _ = make_editor(load_run(tiny_run, ["edit.lam=1e4"])).edit(requests, codes, ids)
    assert got.batches[0].meta["lam_scale"] == scale
    for p in range(n_pos):
        expected = strong if p == target else ref
        torch.testing.assert_close(got.batches[0].delta_w[p], expected.batches[0].delta_w[p])
    assert got.batches[0].delta_w[target].norm() < 0.5 * ref.batches[0].delta_w[target].norm()  # λ took effect
    for bad in ("[1, 2]", "[1, 0, 1, 1]"):
        with pytest.raises(ConfigError, match="lam_scale"):
            make_editor(load_run(tiny_run, [f"edit.lam_scale={bad}"])).edit(requests, codes, ids)


def test_one_memory_solved_at_any_lambda_equals_a_fresh_edit_at_that_lambda(tiny_run):
    """``memorize`` holds everything λ-independent: solving it at λ gives the very ΔW an edit at λ gives (what the
    λ searches of sweep and calibrate rely on), and a bad λ is refused."""
    import pytest

    from genrecedit.errors import ConfigError

    run = load_run(tiny_run, ["edit.lam=3.0"])
    requests = build_requests(run)
    editor = make_editor(run)
    memory = editor.memorize(requests, run.prepared.codes)
    for lam in (3.0, 30.0):
        solved, report = editor.solve(memory, run.prepared.codes, run.prepared.split.item_ids, lam)
        fresh, _ = make_editor(load_run(tiny_run, [f"edit.lam={lam}"])).edit(
            requests, run.prepared.codes, run.prepared.split.item_ids)
        a, b = solved.batches[-1], fresh.batches[-1]
        assert a.meta["lam"] == lam and solved.layers == fresh.layers
        assert all(torch.equal(a.delta_w[p], b.delta_w[p]) for p in b.delta_w)
    small, _ = editor.solve(memory, run.prepared.codes, run.prepared.split.item_ids, 3.0)
    big, _ = editor.solve(memory, run.prepared.codes, run.prepared.split.item_ids, 30.0)
    norms = [(big.batches[-1].delta_w[p].norm(), small.batches[-1].delta_w[p].norm()) for p in big.batches[-1].delta_w]
    assert all(b <= s for b, s in norms) and any(b < s for b, s in norms)  # (a position whose δ is 0 has ΔW 0)
    with pytest.raises(ConfigError, match="λ"):
        editor.solve(memory, run.prepared.codes, run.prepared.split.item_ids, 0.0)


def test_default_delta_optimiser_converges_every_request_with_a_margin(tiny_run):
    """With the shipped margin (stop_prob 0.9) every δ must reach it: a δ that never does is a target the closed-form
    update cannot meet either (docs/method.md §5.4: on game the paper's lr 0.5 / 30 steps left most position-1 δ
    short). On
    this run the paper's settings leave 4 of 30 requests at position 3 short; the defaults none."""
    run = load_run(tiny_run, ["edit.lam=1.0", "edit.delta.stop_prob=0.9"])
    requests = build_requests(run)
    _, report = make_editor(run).edit(requests, run.prepared.codes, run.prepared.split.item_ids)
    assert report.converged == [len(requests)] * run.recommender.layout.n_positions


def _greedy_or_not(dec, layout, enc, n, hit_positions):
    """[n, P] codes built position by position on the unedited model (teacher-forced, HF reference decoder): the
    argmax at the positions in ``hit_positions``, the argmin (never the argmax) at the others."""
    codes = np.zeros((n, layout.n_positions), np.int64)
    for p in range(layout.n_positions):
        prefix = layout.decoder_inputs(codes)[0][:, : p + 1]
        logits = dec.prefix_logits(prefix, enc)[:, layout.position_slice(p)]
        codes[:, p] = (logits.argmax(1) if p in hit_positions else logits.argmin(1)).numpy()
    return codes


@torch.no_grad()
def test_efficacy_is_the_share_of_requests_whose_target_code_is_the_argmax(tiny_model, tiny_layout, tiny_codes,
                                                                           tiny_histories, random_artifact):
    n, n_pos = len(tiny_histories), tiny_layout.n_positions
    base = Recommender(copy.deepcopy(tiny_model), tiny_layout, tiny_codes)
    train = CaseSet(np.arange(n), tiny_histories, np.arange(n), np.zeros(n))
    # chunk_size 5: the 12 requests are scored over several length batches
    editor = ColdItemEditor(base, train, "h", EditConfig(efficacy_samples=100, chunk_size=5))
    dec = base.decoder
    enc = dec.encode(*tiny_layout.encoder_inputs(tiny_histories, tiny_codes))
    # the requests' targets are extra catalog rows (after tiny_codes, so the histories' codes are unchanged):
    # 6 the unedited model predicts at every position, 6 it predicts at positions 0 and 2 only
    right = _greedy_or_not(dec, tiny_layout, enc, n, set(range(n_pos)))
    half = _greedy_or_not(dec, tiny_layout, enc, n, {0, 2})
    codes = np.concatenate([tiny_codes, right, half])
    k = len(tiny_codes)
    histories = np.concatenate([tiny_histories, tiny_histories])
    every = EditRequests(tiny_histories, k + np.arange(n), np.full(n, -1))
    both = EditRequests(histories, k + np.arange(2 * n), np.full(2 * n, -1))
    zero = random_artifact(np.arange(k, k + 2 * n), codes, scale=0.0)  # ΔW = 0: the edited model is the base one
    got = editor.efficacy(every, codes, zero, None)
    assert got == {"before": [1.0] * n_pos, "after": [1.0] * n_pos, "n_sampled": n}
    got = editor.efficacy(EditRequests(tiny_histories, k + n + np.arange(n), np.full(n, -1)), codes, zero, None)
    assert got["before"] == got["after"] == [1.0, 0.0, 1.0, 0.0]
    got = editor.efficacy(both, codes, zero, None)
    assert got["before"] == got["after"] == [1.0, 0.5, 1.0, 0.5] and got["n_sampled"] == 2 * n

    # an edit: "after" is scored with the artifact's own (prefix-gated) schedule, "before" with the previous one
    art = random_artifact(np.arange(k, k + n), codes, seed=1, scale=0.5)
    schedule = art.schedule(editor.trigger)
    targets = torch.from_numpy(codes[both.items])
    enc2 = dec.encode(*tiny_layout.encoder_inputs(histories, codes))
    expected = []
    for p in range(n_pos):
        prefix = tiny_layout.decoder_inputs(codes[both.items])[0][:, : p + 1]
        logits = dec.prefix_logits(prefix, enc2, schedule(p), codes=targets[:, :p])[:, tiny_layout.position_slice(p)]
        expected.append(round(float((logits.argmax(1) == targets[:, p]).float().mean()), 4))
    got = editor.efficacy(both, codes, art, None)
    assert got["before"] == [1.0, 0.5, 1.0, 0.5] and got["after"] == expected
    assert expected != got["before"]  # the edit moved some argmax: the check above is not the unedited model's
    # a known "before" is returned as given; only the edited model is run
    assert editor.efficacy(both, codes, art, None, before=[0.25] * n_pos)["before"] == [0.25] * n_pos
    # "before" is the model as edited by the previous artifact
    assert editor.efficacy(both, codes, zero, art)["before"] == expected
