"""Fixtures for the update baselines: the tiny trained run loaded once, and its edit requests."""
from __future__ import annotations

import pytest

from genrecedit.runs.backbone import load_run
from genrecedit.runs.edit import build_requests


@pytest.fixture(scope="module")
def loaded_tiny(tiny_run):
    return load_run(tiny_run)


@pytest.fixture(scope="module")
def tiny_requests(loaded_tiny):
    requests = build_requests(loaded_tiny)
    assert len(requests) > 0
    return requests
