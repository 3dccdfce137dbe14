"""Preserved scoring (``trigger=preserve``): the edited items are scored by the edited model, every other item by the
unedited one, so an edit adds the new items to the ranking without moving any other item's score."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genrecedit.model.beam import PreservingSchedule, beam_search
from genrecedit.model.decoder import SteppedDecoder
from genrecedit.model.trie import PrefixTrie

EDITED = np.array([2, 5, 9])


def _scores_by_item(beams, row: int) -> dict[int, float]:
    return {int(i): float(s) for i, s in zip(beams.items[row], beams.scores[row]) if i >= 0}


@pytest.fixture()
def setting(tiny_model, tiny_layout, tiny_codes, tiny_histories):
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    return dec, trie, ids, mask


def test_trie_subtree_flags_match_the_prefixes(tiny_layout, tiny_codes):
    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    flags = trie.subtree_flags(EDITED)
    for p in range(1, tiny_codes.shape[1] + 1):
        edited_prefixes = {tuple(c[:p]) for c in tiny_codes[EDITED]}
        for item, codes in enumerate(tiny_codes):
            node = int(trie._item_nodes[p - 1][item])
            assert bool(flags[p - 1][node]) == (tuple(codes[:p]) in edited_prefixes)


def test_every_item_is_scored_by_the_model_that_knows_it(random_artifact, tiny_layout, tiny_codes, setting):
    dec, trie, ids, mask = setting
    art = random_artifact(EDITED, tiny_codes, seed=7)
    wide = len(tiny_codes)  # a beam as wide as the catalog ranks every item
    with torch.no_grad():
        base = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide)
        edited = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide, edits=art.schedule("prefix"))
        kept = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide, edits=art.schedule("preserve"))
    moved = 0
    for row in range(ids.shape[0]):
        b, e, k = (_scores_by_item(x, row) for x in (base, edited, kept))
        assert set(k) == set(range(wide))
        for item, score in k.items():
            want = e[item] if item in EDITED else b[item]
            assert score == pytest.approx(want, abs=1e-5), (row, item)
            moved += item not in EDITED and abs(e[item] - b[item]) > 1e-4
        # the ranking is sorted by those scores
        assert np.all(np.diff(kept.scores[row].numpy()) <= 1e-6)
    assert moved  # the plain edit does move other items' scores: the test can tell the two apart


def test_narrow_beam_keeps_other_items_in_their_base_order(random_artifact, tiny_layout, tiny_codes, setting):
    dec, trie, ids, mask = setting
    art = random_artifact(EDITED, tiny_codes, seed=7, scale=2.0)
    wide = len(tiny_codes)
    with torch.no_grad():
        base = beam_search(dec, tiny_layout, trie, ids, mask, wide, wide)
        kept = beam_search(dec, tiny_layout, trie, ids, mask, 4, 4, edits=art.schedule("preserve"))
    for row in range(ids.shape[0]):
        b = _scores_by_item(base, row)
        order = [int(i) for i in base.items[row]]
        others = [int(i) for i in kept.items[row] if i >= 0 and i not in EDITED]
        assert others == sorted(others, key=order.index)
        for item in others:
            assert _scores_by_item(kept, row)[item] == pytest.approx(b[item], abs=1e-5)


@pytest.mark.parametrize("constrained", [True, False])
def test_preserve_cached_equals_reference(random_artifact, tiny_layout, tiny_codes, setting, constrained):
    dec, trie, ids, mask = setting
    sched = random_artifact(EDITED, tiny_codes, seed=7).schedule("preserve")
    with torch.no_grad():
        cached = beam_search(dec, tiny_layout, trie, ids, mask, 6, 6, constrained, sched, cached=True)
        ref = beam_search(dec, tiny_layout, trie, ids, mask, 6, 6, constrained, sched, cached=False)
    assert torch.equal(cached.items, ref.items)
    torch.testing.assert_close(cached.scores, ref.scores, rtol=1e-4, atol=1e-4)


def test_a_zero_edit_leaves_decoding_unchanged(random_artifact, tiny_layout, tiny_codes, setting):
    dec, trie, ids, mask = setting
    sched = random_artifact(EDITED, tiny_codes, seed=7, scale=0.0).schedule("preserve")
    assert isinstance(sched, PreservingSchedule)
    with torch.no_grad():
        base = beam_search(dec, tiny_layout, trie, ids, mask, 5, 5)
        kept = beam_search(dec, tiny_layout, trie, ids, mask, 5, 5, edits=sched)
    assert torch.equal(base.items, kept.items)
    torch.testing.assert_close(base.scores, kept.scores)


def test_preserve_needs_a_position_wise_edit(random_artifact, tiny_codes):
    with pytest.raises(ValueError, match="position-wise"):
        random_artifact(EDITED, tiny_codes, seed=7, scheme="object_wise").schedule("preserve")
