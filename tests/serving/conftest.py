"""Fixtures for the serving tests: one tiny trained run per session, services and clients over it."""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from genrecedit.serving import LiveService, ServiceConfig
from serving_helpers import api, key_file
from serving_run import SERVICE_OVERRIDES, synthetic_dataset, train_tiny_run

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def serving_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    return train_tiny_run(synthetic_dataset(root / "data"), root / "run", root / "cache")


OpenService = Callable[..., LiveService]


@pytest.fixture
def open_service(serving_run, tmp_path) -> Iterator[OpenService]:
    """open_service(state="state", overrides=[], leader=None, name=None, **service_config) -> LiveService on the
    tiny run (its API key: ``serving_helpers.API_KEY``; with ``leader``: a follower of it); closed after, in reverse
    order (followers before their leader)."""
    opened: list[LiveService] = []

    def open_(state: str = "state", overrides: list[str] | None = None, leader: LiveService | None = None,
              name: str | None = None, **kwargs) -> LiveService:
        kwargs.setdefault("api_key_file", key_file(tmp_path))
        # uncapped unless a test asks: the cap is stateful (a list depends on the lists served before it), and most
        # tests compare served lists across adds and rollbacks; test_serving_cap.py covers the default
        kwargs.setdefault("exposure_cap", 0.0)
        cfg = ServiceConfig(state_dir=tmp_path / state, **kwargs)
        service = LiveService.open(serving_run, cfg, SERVICE_OVERRIDES + list(overrides or []), leader, name)
        opened.append(service)
        return service

    yield open_
    for service in reversed(opened):
        service.close()


@pytest.fixture
def client(open_service) -> Iterator[TestClient]:
    service = open_service()
    with api(service) as c:
        yield c


_databases = itertools.count()


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver", reason="pgserver (a PostgreSQL for tests, in the dev extra) is not "
                                                      "installed")
    try:
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    except Exception as err:  # noqa: BLE001 - no server on this machine: skip, saying why
        pytest.skip(f"pgserver could not start PostgreSQL: {type(err).__name__}: {err}")
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh database on the server, as a conninfo string."""
    from psycopg.conninfo import make_conninfo

    name = f"registry_{next(_databases)}"
    pg_server.psql(f"CREATE DATABASE {name};")
    return make_conninfo(pg_server.get_uri(), dbname=name)
