"""Exceptions a user can act on. Raised at the boundaries (files, HTTP, artifacts); trusted inside."""
from __future__ import annotations


class GenRecEditError(Exception):
    """Base class of every error this package raises on purpose."""


class DataFormatError(GenRecEditError):
    """A data file is malformed. The message names the file and, where known, the line."""

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        where = f"{path}" if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


class UnknownItemError(GenRecEditError):
    """An item id is not in the catalog."""


class DuplicateItemError(GenRecEditError):
    """An item id occurs twice where ids must be unique."""


class EmptyInputError(GenRecEditError):
    """Something that must not be empty is (item text, a batch, a catalog)."""


class ArtifactMismatchError(GenRecEditError):
    """A saved artifact (tokenizer, model, edit) does not belong to the object it is applied to."""


class ConfigError(GenRecEditError):
    """A configuration value or override is invalid."""
