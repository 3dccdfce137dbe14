"""What a shop renders for a recommended item: its title, its text and the item file's text fields.

The run's own items take them from the prepared dataset (``RecDataset.item_fields``: the item file's text columns,
from which the text the model was trained on was joined with ``" | "``). The title is the field named ``title``, else
the first whose name ends in ``title`` (ML-100k: ``movie_title``), else the first field. An item added through
``POST /items`` has only its text: its title is the text up to the first ``" | "`` (how item files' fields are joined)
and it has no fields.
"""
from __future__ import annotations

import pandas as pd

from genrecedit.data.atomic import TEXT_SEPARATOR
from genrecedit.data.dataset import RecDataset


def title_field(columns: list[str]) -> str | None:
    """The column that holds an item's title (None: no columns)."""
    if "title" in columns:
        return "title"
    return next((c for c in columns if c.lower().endswith("title")), columns[0] if columns else None)


def title_of_text(text: str) -> str:
    return text.split(TEXT_SEPARATOR, 1)[0].strip()


class ItemMetadata:
    """Per item id: ``{"title", "text", "fields"}``, for the run's items from its dataset, for added items from their
    text. Built once (a dict lookup per recommended item)."""

    def __init__(self, dataset: RecDataset) -> None:
        texts = dataset.items["text"]
        fields: pd.DataFrame | None = dataset.item_fields
        columns = list(fields.columns) if fields is not None else []
        title = title_field(columns)
        self._base: dict[str, dict] = {}
        rows = fields.reindex(texts.index).fillna("").to_dict("index") if fields is not None else {}
        for item_id, text in texts.items():
            row = {c: str(v) for c, v in rows.get(item_id, {}).items()}
            shown = row.get(title, "") if title else ""
            self._base[str(item_id)] = {"title": shown or title_of_text(text), "text": text, "fields": row}

    def base(self, item_id: str) -> dict | None:
        """The run's own item (None: not one)."""
        return self._base.get(item_id)

    @staticmethod
    def added(text: str) -> dict:
        return {"title": title_of_text(text), "text": text, "fields": {}}
