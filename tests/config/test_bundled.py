"""Every bundled run config loads into a valid RunConfig (a typo in a shipped YAML fails here, not in `make demo`)."""
from __future__ import annotations

import pytest

from genrecedit.config import bundled_configs, load_config


@pytest.mark.parametrize("name", [n for n in bundled_configs()
                                  if not n.startswith(("mmgrid-", "experiment-"))])
def test_bundled_run_config_loads(name):
    cfg = load_config(name)
    assert cfg.dataset
    if cfg.edit.positions is not None:
        assert cfg.edit.positions and all(isinstance(p, int) for p in cfg.edit.positions)

