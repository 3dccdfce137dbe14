"""Fixtures for the data tests: small atomic files written to tmp_path, and the real datasets when present."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"

WriteFile = Callable[..., Path]


@pytest.fixture
def write_file(tmp_path: Path) -> WriteFile:
    """write_file(name, lines, gz=False) -> path: one line per element, each ended by a newline."""

    def write(name: str, lines: list[str], gz: bool = False) -> Path:
        path = tmp_path / name
        data = "".join(f"{line}\n" for line in lines).encode("utf-8")
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    return write


@pytest.fixture
def game_dir() -> Path:
    path = SHARED_DATASETS / "amazon2018-game"
    if not (path / "amazon2018-game.inter.gz").is_file():
        pytest.skip(f"real dataset absent: {path} (a developer's checkout has ../shared/datasets)")
    return path
