"""Atomic on-disk layout of a saved tokenizer.

``<dir>/tokenizer.json`` (format version, config, input_dim, item ids, content hash),
``<dir>/quantizer.safetensors`` (the quantiser's tensors), ``<dir>/codes.safetensors`` (``codes`` [n, levels+1] int64).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from genrecedit.atomic import atomic_directory
from genrecedit.errors import ArtifactMismatchError

CONFIG_FILE = "tokenizer.json"
QUANTIZER_FILE = "quantizer.safetensors"
CODES_FILE = "codes.safetensors"
ARTIFACT_FILES = frozenset({CONFIG_FILE, QUANTIZER_FILE, CODES_FILE})


def write_artifact(
    directory: Path, meta: dict[str, Any], quantizer: dict[str, torch.Tensor], codes: dict[str, torch.Tensor]
) -> None:
    """Write the three files into a hidden sibling temp dir, then move it into place.

    A reader sees the old tokenizer or the new one, never a mix: the new directory is complete before it is
    renamed. Replacing an existing tokenizer takes two renames (old out of the way, new in); a crash between them
    leaves the old one under ``.<name>.old-*``. A directory holding anything else is never replaced.
    """
    directory = directory.resolve()
    if directory.exists():
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in ARTIFACT_FILES)
        if foreign:
            raise ArtifactMismatchError(
                f"{directory}: refusing to overwrite, it holds files that are not a tokenizer's: {foreign[:5]}"
            )
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        save_file(quantizer, str(tmp / QUANTIZER_FILE))
        save_file(codes, str(tmp / CODES_FILE))
