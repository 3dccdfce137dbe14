"""A stand-in for a split's test cases that raises on any use, for tests that selection never reads the test split
(imported by name: the tests folder is on ``sys.path`` through its root conftest)."""
from __future__ import annotations

import dataclasses

from genrecedit.runs.backbone import LoadedRun

MESSAGE = "test split read during selection"


class NoTestSplit:
    """Stands in for ``split.test``: any attribute, len(), indexing, iteration or truth test raises."""

    def __getattr__(self, name):
        raise AssertionError(f"{MESSAGE} (.{name})")

    def __len__(self):
        raise AssertionError(f"{MESSAGE} (len)")

    def __getitem__(self, key):
        raise AssertionError(f"{MESSAGE} ([{key!r}])")

    def __iter__(self):
        raise AssertionError(f"{MESSAGE} (iter)")

    def __bool__(self):
        raise AssertionError(f"{MESSAGE} (bool)")

    def __array__(self, *args, **kwargs):
        raise AssertionError(f"{MESSAGE} (np.asarray)")


def without_test(run: LoadedRun) -> LoadedRun:
    """``run`` with its split's test cases replaced by ``NoTestSplit`` (data and model otherwise shared)."""
    split = dataclasses.replace(run.prepared.split, test=NoTestSplit())
    return dataclasses.replace(run, prepared=dataclasses.replace(run.prepared, split=split))
