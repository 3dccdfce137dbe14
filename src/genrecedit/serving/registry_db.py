"""The two databases the edit registry runs on, behind one small interface: SQLite (a file in the state dir, the
default) and PostgreSQL (``ServiceConfig.registry_url``, through psycopg). The registry writes its SQL once, with
``?`` placeholders and types both read the same way; ``PostgresDatabase`` rewrites placeholders to ``%s`` and its
schema's ``REAL`` / ``BLOB`` to ``DOUBLE PRECISION`` / ``BYTEA`` (a PostgreSQL ``REAL`` is 4 bytes: a Unix time in it
would be rounded to minutes)."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

from genrecedit.errors import ConfigError


class Cursor(Protocol):
    rowcount: int

    def execute(self, sql: str, args: tuple = ()) -> "Cursor": ...
    def executemany(self, sql: str, rows: list[tuple]) -> None: ...
    def fetchone(self) -> tuple | None: ...
    def fetchall(self) -> list[tuple]: ...


class SQLiteDatabase:
    """``<state dir>/registry.sqlite``: WAL journal, full fsync, foreign keys on."""

    begin = "BEGIN IMMEDIATE"  # takes the write lock at once: two writers never interleave

    def __init__(self, path: Path, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.location = str(self.path)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(schema)

    def cursor(self) -> Cursor:
        return self._conn.cursor()

    def close(self) -> None:
        self._conn.close()


class _PostgresCursor:
    def __init__(self, cur) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def execute(self, sql: str, args: tuple = ()) -> "_PostgresCursor":
        self._cur.execute(sql.replace("?", "%s"), args)
        return self

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        self._cur.executemany(sql.replace("?", "%s"), rows)

    def fetchone(self) -> tuple | None:
        return self._cur.fetchone()

    def fetchall(self) -> list[tuple]:
        return self._cur.fetchall()


class PostgresDatabase:
    """A PostgreSQL database named by a libpq URL or conninfo string (``postgresql://user@host/db``); the schema is
    created under an advisory lock, so that services starting together do not race on it."""

    begin = "BEGIN"

    def __init__(self, url: str, schema: str) -> None:
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError as err:  # pragma: no cover - psycopg is a dependency
            raise ConfigError("a PostgreSQL registry needs psycopg (pip install 'psycopg[binary]')") from err
        try:
            info = conninfo_to_dict(url)
        except psycopg.ProgrammingError:  # its message would echo the string, password included
            raise ConfigError("registry_url is not a PostgreSQL URL or conninfo string "
                              "(postgresql://user:password@host:port/dbname)") from None
        # shown in messages: never the password
        self.location = (f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', '')}"
                         f"/{info.get('dbname', '')}")
        try:
            self._conn = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as err:
            raise ConfigError(f"cannot connect to the registry database {self.location}: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        ddl = schema.replace(" REAL", " DOUBLE PRECISION").replace(" BLOB", " BYTEA")
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('genrecedit registry schema'))")
            self._conn.execute(ddl)

    def cursor(self) -> Cursor:
        return _PostgresCursor(self._conn.cursor())

    def close(self) -> None:
        self._conn.close()
