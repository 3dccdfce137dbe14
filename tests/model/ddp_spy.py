"""``genrecedit`` under a file-write spy, for tests/model/test_ddp.py: ``python ddp_spy.py LOG_DIR WATCHED ARGS...``
runs the CLI with ARGS and, at exit, writes ``LOG_DIR/rank<RANK>.json``: every path under WATCHED this process
opened for writing, renamed onto or created as a directory (Python audit events: ``open``, ``os.rename`` — which
``os.replace`` raises too — and ``os.mkdir``)."""
from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

log_dir, watched = Path(sys.argv[1]), os.path.realpath(sys.argv[2])
writes: list[str] = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _under(path) -> bool:
    try:
        return os.path.realpath(os.fsdecode(path)).startswith(watched)
    except (TypeError, ValueError):
        return False  # a file descriptor or an odd object: not a path under the watched folder


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS)
        if writing and path is not None and _under(path):
            writes.append(f"open {os.fsdecode(path)}")
    elif event == "os.rename" and _under(args[1]):
        writes.append(f"rename {os.fsdecode(args[1])}")
    elif event == "os.mkdir" and _under(args[0]):
        writes.append(f"mkdir {os.fsdecode(args[0])}")


def _dump() -> None:
    rank = os.environ.get("RANK", "0")
    (log_dir / f"rank{rank}.json").write_text(json.dumps(writes))


sys.addaudithook(_hook)
atexit.register(_dump)
sys.argv = ["genrecedit", *sys.argv[3:]]
from genrecedit.cli import app  # noqa: E402

app()
