"""A service with 1,000 batches: restored exactly from its registry and artifact, the newest rolled back to the
outputs of a service that never had it (bit for bit), an older one to those of a service that never had it and
added the later batches on top (within float tolerance). The restore time is measured by bench/stack_restore.py,
not here."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from genrecedit.serving import LiveService, ServiceConfig
from genrecedit.serving.service import NewItem
from serving_helpers import HISTORIES, key_file, service_outputs
from serving_run import SERVICE_OVERRIDES

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from stack_restore import stack_item, write_stack  # noqa: E402

N = 1000


def _open(run, state: Path, tmp_path: Path) -> LiveService:
    # uncapped: the cap is stateful, and the lists are compared across restores and rollbacks
    cfg = ServiceConfig(state_dir=state, exposure_cases=0, api_key_file=key_file(tmp_path), exposure_cap=0.0)
    return LiveService.open(run, cfg, SERVICE_OVERRIDES)


def _outputs(service: LiveService) -> list[tuple[list[str], list[float]]]:
    return service_outputs(service, HISTORIES)


def test_thousand_batches_restore_and_roll_back_exactly(serving_run, tmp_path):
    a_state, b_state, c_state = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    service = _open(serving_run, a_state, tmp_path)
    write_stack(service, N - 3)
    service.close()
    shutil.copytree(a_state, b_state)  # B: the first N - 3 batches
    service = _open(serving_run, a_state, tmp_path)
    write_stack(service, 2, start=N - 3)
    service.close()
    shutil.copytree(a_state, c_state)  # C: the first N - 1 batches
    service = _open(serving_run, a_state, tmp_path)
    written = write_stack(service, 1, start=N - 1)
    service.close()

    a = _open(serving_run, a_state, tmp_path)  # the restore
    snap = a.snapshot
    assert len(snap.active_batches) == N and len(snap.catalog) == snap.catalog.n_base + N
    assert snap.artifact.batch_ids() == written.batch_ids() and snap.artifact.stats_known
    for p in range(len(written.layers)):
        if written.total_delta(p) is not None:
            assert torch.equal(snap.artifact.total_delta(p), written.total_delta(p))
            assert torch.equal(snap.artifact.previous_cov(p), written.previous_cov(p))
    assert a.item(stack_item(N - 1)[0])["batch_id"] == snap.active_batches[-1]

    # the newest: bit for bit the outputs of the service that never had it
    c = _open(serving_run, c_state, tmp_path)
    answer = a.roll_back(snap.active_batches[-1])
    assert answer["exact"] and answer["recomputed"] == []
    assert _outputs(a) == _outputs(c)
    for p in range(len(written.layers)):
        if c.snapshot.artifact.previous_cov(p) is not None:  # the statistic within float64 rounding
            torch.testing.assert_close(a.snapshot.artifact.previous_cov(p), c.snapshot.artifact.previous_cov(p),
                                       rtol=1e-12, atol=1e-9)
    c.close()

    # an older one (batch N - 2, below one more): the later batch is edited again on the stack without it, as a
    # service that never had it edits that batch's item when it is added
    older = a.snapshot.active_batches[-2]
    answer = a.roll_back(older)
    assert not answer["exact"] and len(answer["recomputed"]) == 1
    b = _open(serving_run, b_state, tmp_path)
    item_id, text = stack_item(N - 2)
    b.add_items([NewItem(item_id, text)])
    assert a.item(item_id)["sid"] == b.item(item_id)["sid"]
    assert stack_item(N - 3)[0] not in a.snapshot.catalog.index
    for (items_a, scores_a), (items_b, scores_b) in zip(_outputs(a), _outputs(b)):
        assert items_a == items_b
        np.testing.assert_allclose(scores_a, scores_b, rtol=1e-4, atol=1e-4)
    a.close()
    b.close()
