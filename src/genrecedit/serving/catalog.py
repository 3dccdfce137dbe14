"""What the service answers from: the catalog (the run's items plus the added batches) and the immutable
``Snapshot`` that pairs it with a recommender (its own trie) and the active edit artifact.

SIDs of added items come from the run's frozen tokenizer, always by *replay*: a copy of the run's tokenizer is given
the active batches in order (``SemanticIdTokenizer.assign``), so the catalog is a pure function of (run, active
batches). The registry stores each item's SID and a restart checks the replay against it. One consequence, stated in
the API: rolling back an older batch recomputes the later ones, and a later item that shared a SID prefix with a
removed one may get a smaller dedup token (its SID's last code).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from genrecedit.coldstart.exposure import ExposureCap
from genrecedit.coldstart.insertion import CalibratedInsertion
from genrecedit.coldstart.prior import ContentPrior, PriorConfig, normalized
from genrecedit.config import KnowledgeConfig
from genrecedit.data.dataset import PAD_ITEM, CaseSet
from genrecedit.edit.artifact import EditArtifact, EditBatch, TriggerMode
from genrecedit.edit.knowledge import EditRequests, pseudo_histories, successor_histories
from genrecedit.errors import EmptyInputError, UnknownItemError
from genrecedit.model.beam import Beams
from genrecedit.model.recommender import DecodeConfig, Recommender
from genrecedit.runs.prepare import Prepared
from genrecedit.serving.registry import BatchItems
from genrecedit.tokenizer.sids import SemanticIdTokenizer


@dataclass(frozen=True)
class Catalog:
    """Catalog order: the run's items (``n_base``), then each added batch's items in batch order.

    item_ids [n]; index: id -> position; codes [n, P] SIDs; embeddings [n, d]; warm [n] bool (added items are never
    warm); batches: the added batches in order; tokenizer: a private copy that knows every catalog item (it gives
    the next batch its dedup tokens and refuses duplicates); never mutated after construction.
    """

    item_ids: list[str]
    index: dict[str, int]
    codes: np.ndarray
    embeddings: np.ndarray
    warm: np.ndarray
    n_base: int
    batches: tuple[BatchItems, ...]
    tokenizer: SemanticIdTokenizer

    @staticmethod
    def base(prepared: Prepared) -> "Catalog":
        """The run's catalog as trained and evaluated (warm and cold items of its split)."""
        ids = list(prepared.split.item_ids)
        return Catalog(ids, {item: i for i, item in enumerate(ids)}, np.asarray(prepared.codes, np.int64),
                       np.asarray(prepared.embeddings, np.float32), np.asarray(prepared.split.warm, bool), len(ids),
                       (), prepared.tokenizer)

    def __len__(self) -> int:
        return len(self.item_ids)

    def extended(self, batch_id: str, item_ids: list[str], texts: list[str], embeddings: np.ndarray) -> "Catalog":
        """This catalog plus one batch [m]; SIDs from a copy of the tokenizer (this catalog is untouched).
        Raises ``DuplicateItemError`` for an id already in the catalog or repeated in the batch."""
        return self.extended_many([BatchItems(batch_id, list(item_ids), list(texts), embeddings, None)])  # sids: assigned

    def extended_many(self, batches: Sequence[BatchItems]) -> "Catalog":
        """This catalog plus ``batches`` in order (their ``sids`` ignored: assigned here), what chained ``extended``
        calls give, with one copy of the tokenizer instead of one per batch (a restart replays thousands)."""
        if not batches:
            return self
        tokenizer = copy.deepcopy(self.tokenizer)
        added = []
        for b in batches:
            sids = tokenizer.assign(b.embeddings, list(b.item_ids))
            added.append(BatchItems(b.batch_id, list(b.item_ids), list(b.texts), np.asarray(b.embeddings, np.float32),
                                    sids))
        new_ids = [item for b in added for item in b.item_ids]
        index = dict(self.index)
        index.update({item: len(self.item_ids) + i for i, item in enumerate(new_ids)})
        return Catalog(self.item_ids + new_ids, index, np.concatenate([self.codes] + [b.sids for b in added]),
                       np.concatenate([self.embeddings] + [b.embeddings for b in added]),
                       np.concatenate([self.warm, np.zeros(len(new_ids), bool)]), self.n_base,
                       self.batches + tuple(added), tokenizer)

    def truncated(self, base: "Catalog", n_batches: int) -> "Catalog":
        """``base`` plus this catalog's first ``n_batches`` batches (their SIDs replayed, hence unchanged)."""
        return base.extended_many(self.batches[:n_batches])

    def batch_indices(self, batch_id: str) -> np.ndarray:
        """[m] catalog positions of one added batch's items."""
        start = self.n_base
        for b in self.batches:
            if b.batch_id == batch_id:
                return np.arange(start, start + len(b.item_ids))
            start += len(b.item_ids)
        raise KeyError(batch_id)

    def origin(self, item_id: str) -> str | None:
        """The batch that added ``item_id``, or None for an item of the run's own catalog."""
        pos = self.index[item_id]
        if pos < self.n_base:
            return None
        for b in self.batches:
            if item_id in b.item_ids:
                return b.batch_id
        return None

    def histories(self, histories: list[list[str]], max_history: int) -> np.ndarray:
        """Item-id histories (oldest first) -> [n, max_history] indices, left-padded; only the most recent
        ``max_history`` items of a longer history are kept (what the model was trained on). An empty history is
        valid. ``UnknownItemError`` names the first ids not in the catalog."""
        out = np.full((len(histories), max_history), PAD_ITEM, np.int64)
        for row, history in enumerate(histories):
            unknown = [item for item in history if item not in self.index]
            if unknown:
                shown = ", ".join(repr(u) for u in unknown[:5])
                raise UnknownItemError(f"item{'s' if len(unknown) > 1 else ''} {shown} in the history "
                                       f"{'are' if len(unknown) > 1 else 'is'} not in the catalog")
            recent = [self.index[item] for item in history[-max_history:]]
            if recent:
                out[row, -len(recent):] = recent
        return out


@dataclass(frozen=True)
class Snapshot:
    """Everything one request needs, never mutated: requests take one reference at their start, so each answer
    comes wholly from one model (old or new, never a mix). ``version`` counts swaps since the service started."""

    version: int
    catalog: Catalog
    recommender: Recommender
    artifact: EditArtifact | None
    schedule: Callable | None
    prior: ContentPrior | None = None  # the run's content prior over this catalog's new items, when enabled
    insertion: CalibratedInsertion | None = None  # the run's calibrated insertion (served instead of the prior)
    new_items: np.ndarray | None = None  # the catalog's new items and its unit embeddings, bound once for the
    unit: torch.Tensor | None = None  # insertion (not per request)

    def rank(self, histories: np.ndarray, cfg: DecodeConfig, cap: ExposureCap | None = None,
             exclude: np.ndarray | None = None) -> Beams:
        """The recipe this snapshot serves: beam search with the edit schedule, then the calibrated insertion or
        the content prior over the catalog's new items. ``cap``: the lists are served through it, in row order,
        each item counted by its id (so its count carries over snapshots); a new item it blocks leaves the list and
        the next entry moves up (without an insertion the beams are decoded as wide as the beam for that);
        ``exclude`` [n, e] (-1: none): items each row may not serve, taken out before the cap counts (with a cap
        only: without one a caller filters the list itself)."""
        key = self.catalog.item_ids.__getitem__
        if self.insertion is not None:
            width = self.insertion.cfg.width or cfg.k
            beams = self.recommender.recommend(histories, replace(cfg, k=width), self.schedule)
            return self.insertion.apply(self.catalog.embeddings, self.catalog.codes, self.new_items, histories, beams,
                                        cfg.k, self.unit, cap=cap, key=key, exclude=exclude)
        width = cfg.k if cap is None else max(cfg.k, cfg.beam)
        beams = self.recommender.recommend(histories, replace(cfg, k=width), self.schedule,
                                           record_levels=self.prior is not None)
        if self.prior is not None:
            beams = self.prior.apply(histories, beams, width)
        if cap is None:
            return beams
        items = beams.items.numpy()
        is_new = (items >= 0) & ~self.catalog.warm[np.clip(items, 0, None)]
        return Beams.of_items(*cap.select(beams.scores.numpy(), items, is_new, cfg.k, key=key, exclude=exclude),
                              self.catalog.codes)

    @property
    def active_batches(self) -> list[str]:
        """The active batches in stack order: item batches and feedback batches (which add no catalog item)."""
        return [b.batch_id for b in self.artifact.batches] if self.artifact is not None else []


def build_snapshot(version: int, catalog: Catalog, base: Recommender, artifact: EditArtifact | None,
                   trigger: TriggerMode, prior: PriorConfig | None = None,
                   insertion: CalibratedInsertion | None = None, text_edits: bool = True) -> Snapshot:
    """A recommender of its own over ``catalog`` (shares the frozen model; builds the trie) plus the decoding
    schedule of ``artifact`` and, when ``prior`` is enabled, the content prior over the catalog's new (not warm)
    items, added ones included. Edits never change model weights, so snapshots can share them. ``text_edits``
    False: the text edits of the catalog's item batches stay in the artifact but do not fire (the insertion serves
    those items); feedback batches fire."""
    recommender = Recommender(base.model, base.layout, catalog.codes)
    firing = artifact
    if artifact is not None and not text_edits:  # the item batches' text edits stay stored, unfired
        added = {b.batch_id for b in catalog.batches}
        firing = artifact.firing(lambda b: b.batch_id not in added)
    schedule = firing.schedule(trigger, recommender.device) if firing is not None and firing.batches else None
    content = None
    if insertion is None and prior is not None and prior.enabled and (~catalog.warm).any():
        content = ContentPrior(prior, catalog.embeddings, catalog.codes, np.flatnonzero(~catalog.warm),
                               recommender.trie)
    new_items, unit = None, None
    if insertion is not None:
        new_items, unit = np.flatnonzero(~catalog.warm), normalized(catalog.embeddings)
    return Snapshot(version, catalog, recommender, artifact, schedule, content, insertion, new_items, unit)


def text_requests(train: CaseSet, catalog: Catalog, items: np.ndarray, kcfg: KnowledgeConfig) -> EditRequests:
    """Text-only knowledge (docs/method.md §5.2) for new catalog items [m] — an item added now has no observed
    cases: successor histories when the run's ``knowledge.source`` is ``successor``, else pseudo-histories (an
    item may get none)."""
    build = successor_histories if kcfg.source == "successor" else pseudo_histories
    return build(train, catalog.warm, catalog.embeddings, items, kcfg.histories_per_item, kcfg.neighbours)


def knowledge_for(train: CaseSet, catalog: Catalog, items: np.ndarray, kcfg: KnowledgeConfig) -> EditRequests:
    """``text_requests``, where ``EmptyInputError`` names the items that get none."""
    requests = text_requests(train, catalog, items, kcfg)
    taught = set(requests.items.tolist())
    missing = [catalog.item_ids[i] for i in items if i not in taught]
    if missing:
        raise EmptyInputError(f"no pseudo-histories for item(s) {', '.join(map(repr, missing[:5]))}: none of its "
                              f"{kcfg.neighbours} most similar warm items has a training history; give a more "
                              "descriptive text")
    return requests


def with_batch_id(artifact: EditArtifact, batch_id: str) -> EditArtifact:
    """The artifact with its newest batch renamed to the registry's id (the editor draws a random one)."""
    return artifact.with_newest_id(batch_id)


def delta_fingerprint(batch: EditBatch) -> str:
    """sha256 over a batch's ΔW tensors (position order, float64 bytes): what the registry checks on restart."""
    h = hashlib.sha256()
    for p in sorted(batch.delta_w):
        h.update(f"{p}:".encode())
        h.update(batch.delta_w[p].detach().cpu().to(dtype=batch.delta_w[p].dtype).contiguous().numpy().tobytes())
    return h.hexdigest()
