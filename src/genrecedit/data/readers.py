"""Where datasets come from: the file readers, the embedded ML-100k default, and name/path resolution.

``load_dataset`` is the one entry point the CLI, experiments and tests call.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from genrecedit.data._io import write_atomic
from genrecedit.data.amazon2023 import read_amazon2023
from genrecedit.data.atomic import read_atomic
from genrecedit.data.dataset import RecDataset
from genrecedit.errors import DataFormatError, GenRecEditError

__all__ = [
    "DatasetNotFoundError",
    "default_cache_dir",
    "default_data_root",
    "load_dataset",
    "load_ml100k",
    "read_amazon2023",
    "read_atomic",
]

DATA_ROOT_ENV = "GENRECEDIT_DATA"
CACHE_DIR_ENV = "GENRECEDIT_CACHE"
ML100K = "ml-100k"
RECBOLE_REQUIREMENT = "recbole==1.2.1"  # the PyPI wheel ships ml-100k; it is only unzipped, never imported
RECBOLE_WHEEL_GLOB = "recbole-1.2.1-*.whl"
ML100K_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item")


class DatasetNotFoundError(GenRecEditError, FileNotFoundError):
    """No dataset matches the given name or path (the message lists every place that was tried)."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]  # src/genrecedit/data/readers.py → repository root


def default_data_root() -> Path | None:
    """Folder of named datasets: ``$GENRECEDIT_DATA`` when set, else the first existing of
    ``<repo>/../shared/datasets`` and ``<cwd>/../shared/datasets`` (a developer's checkout), else None."""
    if env := os.environ.get(DATA_ROOT_ENV):
        return Path(env)
    for candidate in (_repo_root().parent / "shared" / "datasets", Path.cwd().parent / "shared" / "datasets"):
        if candidate.is_dir():
            return candidate
    return None


def default_cache_dir() -> Path:
    """Downloads and extracted files: ``$GENRECEDIT_CACHE`` when set, else ``<cwd>/.cache``."""
    return Path(os.environ.get(CACHE_DIR_ENV, Path.cwd() / ".cache"))


def _download_recbole_wheel(cache_dir: Path) -> Path:
    cached = sorted(cache_dir.glob(RECBOLE_WHEEL_GLOB))
    if cached:
        return cached[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", RECBOLE_REQUIREMENT,
           "-d", str(cache_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    cached = sorted(cache_dir.glob(RECBOLE_WHEEL_GLOB))
    if result.returncode != 0 or not cached:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DatasetNotFoundError(
            f"could not download {RECBOLE_REQUIREMENT} (it ships ml-100k) into {cache_dir}: "
            f"`{' '.join(cmd)}` failed: {' / '.join(tail)}. Put the wheel into {cache_dir} by hand, or pass "
            "a dataset folder instead."
        )
    return cached[0]


def load_ml100k(cache_dir: Path) -> RecDataset:
    """MovieLens-100k (943 users, 1,682 movies, 100k ratings), the embedded default of a fresh machine.

    The files are unzipped from the PyPI wheel ``recbole==1.2.1`` (downloaded with pip into ``cache_dir`` once)
    into ``cache_dir/ml-100k/``, atomically, then read by ``read_atomic``; item text is ``title | year | genres``.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / ML100K
    paths = [target / f for f in ML100K_FILES]
    if not all(p.is_file() for p in paths):
        cache_dir.mkdir(parents=True, exist_ok=True)
        wheel = _download_recbole_wheel(cache_dir)
        try:
            with zipfile.ZipFile(wheel) as zf:
                for path in paths:
                    write_atomic(path, zf.read(ML100K_MEMBER_DIR + path.name))
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataFormatError(wheel, f"not a recbole wheel with {ML100K_MEMBER_DIR}: {e}") from e
    return read_atomic(paths[0], paths[1], name=ML100K)


def _first_file(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _read_folder(folder: Path, tried: list[str]) -> RecDataset | None:
    """A folder holding ``<name>.inter[.gz]`` + ``<name>.item[.gz]`` (name = the folder's, or the only pair), or
    Amazon 2023 ``<Category>.jsonl[.gz]`` + ``meta_<Category>.jsonl[.gz]``; None when it holds neither."""
    tried.append(f"{folder}/<name>.inter[.gz] + .item[.gz]")
    others = sorted({p.name.split(".inter")[0] for p in folder.glob("*.inter*")} - {folder.name})
    for stem in [folder.name] + (others if len(others) == 1 else []):  # several other pairs: ambiguous
        inter = _first_file(folder, [f"{stem}.inter.gz", f"{stem}.inter"])
        item = _first_file(folder, [f"{stem}.item.gz", f"{stem}.item"])
        if inter and item:
            return read_atomic(inter, item, name=folder.name)
    tried.append(f"{folder}/<Category>.jsonl[.gz] + meta_<Category>.jsonl[.gz]")
    metas = sorted(folder.glob("meta_*.jsonl*"))
    if len(metas) == 1:
        category = metas[0].name[len("meta_"):].split(".jsonl")[0]
        reviews = _first_file(folder, [f"{category}.jsonl.gz", f"{category}.jsonl"])
        if reviews:
            return read_amazon2023(reviews, metas[0], name=folder.name)
    return None


def load_dataset(name_or_path: str, data_root: Path | None = None, cache_dir: Path | None = None) -> RecDataset:
    """Resolve and read a dataset.

    ``"ml-100k"`` → ``load_ml100k(cache_dir)``; an existing folder → the atomic (or Amazon 2023) files inside it;
    an existing ``*.inter[.gz]`` file → it and its sibling ``.item[.gz]``; any other name → the folder
    ``<data_root>/<name>/`` (``data_root`` defaults to ``default_data_root()``, ``cache_dir`` to
    ``default_cache_dir()``). Raises DatasetNotFoundError listing every place tried.
    """
    if name_or_path == ML100K:
        return load_ml100k(cache_dir if cache_dir is not None else default_cache_dir())
    tried: list[str] = []
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (ds := _read_folder(path, tried)) is not None:
            return ds
    elif path.is_file() and ".inter" in path.name:
        stem = path.name.split(".inter")[0]
        item = _first_file(path.parent, [f"{stem}.item.gz", f"{stem}.item"])
        if item:
            return read_atomic(path, item)
        tried.append(f"{path.parent}/{stem}.item[.gz]")
    else:
        tried.append(f"{path} (no such file or folder)")
    root = data_root if data_root is not None else default_data_root()
    if root is None:
        tried.append(f"<data root>/{name_or_path} (no data root: set ${DATA_ROOT_ENV} or pass data_root)")
    elif (root / name_or_path).is_dir():
        if (ds := _read_folder(root / name_or_path, tried)) is not None:
            return ds
    else:
        tried.append(f"{root / name_or_path} (no such folder)")
    raise DatasetNotFoundError(
        f"dataset {name_or_path!r} not found; tried: " + "; ".join(tried) + f"; built-in: {ML100K!r}"
    )
