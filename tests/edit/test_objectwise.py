"""The "w/o position-wise" ablation: an object-wise edit at (l, index 0) whose δ reaches later positions only
through self-attention, active at every index like a weight edit."""
from __future__ import annotations

import numpy as np
import torch

from genrecedit.edit.artifact import EditArtifact
from genrecedit.edit.keys import teacher_force
from genrecedit.edit.objectwise import object_logits
from genrecedit.model.decoder import DecoderCache
from genrecedit.runs.backbone import load_run
from genrecedit.runs.edit import build_requests, edit_run


def test_object_logits_without_delta_equal_the_teacher_forced_decoder(tiny_run):
    run = load_run(tiny_run)
    dec, layout, codes = run.recommender.decoder, run.recommender.layout, run.prepared.codes
    req = build_requests(run)
    tf = teacher_force(dec, layout, req.histories[:8], codes[req.items[:8]], codes)
    rows = torch.arange(8)
    ids, mask = layout.encoder_inputs(req.histories[:8], codes)
    enc = dec.encode(ids, mask)
    dec_in = layout.decoder_inputs(codes[req.items[:8]])[0]
    cache, expected = DecoderCache(), []
    for t in range(layout.n_positions):
        out, cache = dec.step(dec_in[:, t], cache, enc)
        expected.append(out.logits[:, layout.position_slice(t)])
    for layer in range(dec.n_layers):
        got = object_logits(dec, layout, tf, rows, layer, tf.pre[0][layer] + tf.values[0][layer])
        for p in range(layout.n_positions):
            torch.testing.assert_close(got[p], expected[p], atol=1e-5, rtol=1e-5)
        # a change at index 0 above nothing else reaches every later position (through attention)
        moved = object_logits(dec, layout, tf, rows, layer, tf.pre[0][layer] + tf.values[0][layer] + 1.0)
        if layer < dec.n_layers - 1:
            assert all(not torch.allclose(moved[p], expected[p]) for p in range(layout.n_positions))


def test_object_wise_edit_is_one_delta_at_index_zero_active_everywhere(tiny_run, tmp_path):
    run = load_run(tiny_run, ["edit.lam=1.0", "edit.scheme=object_wise"])
    artifact, report = edit_run(run, tmp_path)
    n_pos = run.recommender.layout.n_positions
    assert artifact.scheme == "object_wise" and len(set(artifact.layers)) == 1
    assert list(artifact.batches[0].delta_w) == [0] and not any(report.converged[1:])
    schedule = artifact.schedule("one_one")
    # a weight edit: every step fires it and caches the edited stream
    assert all(schedule(t) is not None and schedule(t).cache_edited for t in range(n_pos))
    loaded = EditArtifact.load(tmp_path / "edits", base_hash=run.base_hash)
    assert loaded.scheme == "object_wise"
    # δ at index 0 alone can make whole SIDs right (teacher-forced); what the weight edit then does to the other
    # indices is the ablation's point (the paper's Table 3: it collapses)
    assert report.converged[0] > 0 and len(report.efficacy["after"]) == n_pos
    # the edit does teach its requests the token at its own index (the later ones may collapse, as in the paper)
    assert report.efficacy["after"][0] > report.efficacy["before"][0]
    assert np.isfinite(artifact.total_delta(0).numpy()).all()
