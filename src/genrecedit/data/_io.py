"""Small file helpers shared by the readers: transparent gzip, line-numbered decoding, atomic writes."""
from __future__ import annotations

import gzip
import io
import os
import tempfile
from pathlib import Path
from typing import IO

from genrecedit.errors import DataFormatError

_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (the suffix is not trusted)."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip."""
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as f:
                return f.read()
        return Path(path).read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a truncated stream is EOFError
        raise DataFormatError(path, f"cannot read file: {e}") from e


def decode_utf8(path: Path, data: bytes) -> str:
    """Decode ``data`` as UTF-8 (a leading BOM is dropped); a bad byte is reported with its 1-based line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", line=line) from e


def read_lines(path: Path) -> list[str]:
    """All lines of a (possibly gzipped) UTF-8 text file, without line terminators.

    Element ``k`` is file line ``k + 1``. Only ``\\n`` ends a line (a trailing ``\\r`` is dropped), so a stray
    ``\\r`` inside a field cannot shift line numbers. A final newline does not create an extra empty line.
    """
    text = decode_utf8(path, read_bytes(path))
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def open_text(path: Path) -> IO[str]:
    """A UTF-8 text stream over a plain or gzipped file, for line-by-line reading of large files."""
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="\n")
    return open(path, encoding="utf-8-sig", newline="\n")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file, and a crash leaves the old file (or none) in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the result is an ordinary shared file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
