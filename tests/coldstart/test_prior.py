"""The decode-time content prior on a hand-built catalog whose mixture probabilities are known in closed form."""
import math

import numpy as np
import pytest
import torch

from genrecedit.coldstart.prior import ContentPrior, PriorConfig
from genrecedit.errors import ConfigError
from genrecedit.model.beam import Beams
from genrecedit.model.trie import PrefixTrie

# items 0-2 warm, 3-5 new; SIDs of 3 codes
CODES = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1]])
NEW = np.array([3, 4, 5])
# the history is item 0; cosines with it: item 3 → 1, item 4 → 0, item 5 → 0.6
EMB = np.array([[1, 0], [0.8, 0.6], [0, 1], [1, 0], [0, 1], [0.6, 0.8]], np.float32)
HIST = np.array([[-1, 0]])


def _beams(trie: PrefixTrie) -> Beams:
    """The beam found items 0, 1, 2 with probabilities .5, .3, .2 (all of the mass)."""
    items = torch.tensor([[0, 1, 2]])
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    level1 = (torch.tensor([[trie.item_nodes(1)[0], trie.item_nodes(1)[2], -1]]),
              torch.log(torch.tensor([[0.8, 0.2, 0.0]])))
    level2 = (torch.tensor([[trie.item_nodes(2)[0], trie.item_nodes(2)[1], trie.item_nodes(2)[2]]]),
              torch.log(torch.tensor([[0.5, 0.3, 0.2]])))
    return Beams(items, scores, torch.as_tensor(CODES[[0, 1, 2]])[None], [level1, level2])


def _probs(out: Beams) -> dict[int, float]:
    return {int(i): float(math.exp(s)) for i, s in zip(out.items[0], out.scores[0]) if i >= 0}


def _w(z: list[float], none: float) -> list[float]:
    denom = math.exp(none) + sum(math.exp(v) for v in z)
    return [math.exp(v) / denom for v in z]


def test_scope_one_mixes_each_prefix_by_content_and_keeps_its_mass():
    trie = PrefixTrie(CODES, (2, 2, 4))
    cfg = PriorConfig(enabled=True, budget=0.5, temperature=0.1, threshold=0.5, scope=1)
    p = _probs(ContentPrior(cfg, EMB, CODES, NEW, trie).apply(HIST, _beams(trie), k=6))
    (w3,) = _w([10.0], 5.0)
    w4, w5 = _w([0.0, 6.0], 5.0)
    assert p[3] == pytest.approx(0.8 * 0.5 * w3, rel=1e-5)
    assert p[5] == pytest.approx(0.2 * 0.5 * w5, rel=1e-5)
    assert p[4] == pytest.approx(0.2 * 0.5 * w4, rel=1e-5)
    assert p[0] == pytest.approx(0.5 * (1 - 0.5 * w3), rel=1e-5)
    assert p[2] == pytest.approx(0.2 * (1 - 0.5 * (w4 + w5)), rel=1e-5)
    assert sum(p.values()) == pytest.approx(1.0, rel=1e-5)  # each prefix keeps its probability
    assert list(p) == sorted(p, key=p.get, reverse=True)  # ranked best first


def test_scope_two_leaves_untouched_prefixes_exact_and_undecoded_prefixes_out():
    trie = PrefixTrie(CODES, (2, 2, 4))
    beams = _beams(trie)
    cfg = PriorConfig(enabled=True, budget=0.5, temperature=0.1, threshold=0.5, scope=2)
    out = ContentPrior(cfg, EMB, CODES, NEW, trie).apply(HIST, beams, k=6)
    p = _probs(out)
    assert 4 not in p  # its prefix (1, 1) was never decoded
    assert float(out.scores[0][out.items[0] == 1]) == float(beams.scores[0, 1])  # prefix (0, 1): no new item
    (w3,) = _w([10.0], 5.0)
    assert p[3] == pytest.approx(0.5 * 0.5 * w3, rel=1e-5)
    assert out.sids[0][out.items[0] == 3].tolist() == [[0, 0, 1]]


def test_scope_zero_is_one_global_mixture_and_the_gate_closes_on_weak_matches():
    trie = PrefixTrie(CODES, (2, 2, 4))
    cfg = PriorConfig(enabled=True, budget=0.2, temperature=0.1, threshold=0.5, scope=0)
    p = _probs(ContentPrior(cfg, EMB, CODES, NEW, trie).apply(HIST, _beams(trie), k=6))
    w3, w4, w5 = _w([10.0, 0.0, 6.0], 5.0)
    assert p[3] == pytest.approx(0.2 * w3, rel=1e-5)
    assert p[0] == pytest.approx(0.5 * (1 - 0.2 * (w3 + w4 + w5)), rel=1e-5)
    # a threshold above every match: almost nothing moves, warm items keep their order and nearly their scores
    shut = PriorConfig(enabled=True, budget=0.2, temperature=0.02, threshold=1.0, scope=0)
    out = ContentPrior(shut, EMB, CODES, NEW, trie).apply(HIST, _beams(trie), k=3)
    assert out.items[0].tolist()[:2] == [0, 1]
    assert _probs(out)[0] == pytest.approx(0.5, rel=0.15)


def test_a_new_item_already_in_the_beam_adds_both_shares():
    trie = PrefixTrie(CODES, (2, 2, 4))
    beams = _beams(trie)
    beams.items[0, 2] = 5  # the beam's third item is the new item 5 (prefix (1, 0)), probability .2
    cfg = PriorConfig(enabled=True, budget=0.5, temperature=0.1, threshold=0.5, scope=2)
    p = _probs(ContentPrior(cfg, EMB, CODES, NEW, trie).apply(HIST, beams, k=6))
    (w5,) = _w([6.0], 5.0)
    assert p[5] == pytest.approx(0.2 * (1 - 0.5 * w5) + 0.2 * 0.5 * w5, rel=1e-5)
    assert sum(1 for i in p if i == 5) == 1


def test_an_empty_history_moves_nothing_and_bad_settings_are_refused():
    trie = PrefixTrie(CODES, (2, 2, 4))
    cfg = PriorConfig(enabled=True, budget=0.5, temperature=0.1, threshold=0.5, scope=1)
    out = ContentPrior(cfg, EMB, CODES, NEW, trie).apply(np.array([[-1, -1]]), _beams(trie), k=3)
    assert out.items[0].tolist() == [0, 1, 2]
    nothing_new = ContentPrior(cfg, EMB, CODES, np.array([], np.int64), trie).apply(HIST[:1], _beams(trie), k=3)
    assert nothing_new.items[0].tolist() == [0, 1, 2]  # a catalog without new items keeps the beam's lists
    for bad in ({"budget": 0}, {"budget": 1}, {"temperature": 0}, {"threshold": 2}, {"scope": -1}, {"recent": 0}):
        with pytest.raises(ConfigError):
            PriorConfig(**bad)
    with pytest.raises(ConfigError, match="scope"):
        ContentPrior(PriorConfig(scope=3), EMB, CODES, NEW, trie)
    with pytest.raises(ConfigError, match="record_levels"):
        bare = Beams(torch.tensor([[0]]), torch.tensor([[0.0]]), torch.tensor([[[0, 0, 0]]]))  # no levels
        ContentPrior(cfg, EMB, CODES, NEW, trie).apply(HIST, bare)


def test_recorded_levels_are_the_exact_prefix_probabilities_of_the_beams(tiny_model, tiny_layout, tiny_codes,
                                                                       tiny_histories):
    """Recording levels changes no result, and each recorded prefix's score is its exact log-probability (the sum of
    every catalog item's probability under it, as brute force computes) whenever the beam covers the catalog."""
    from genrecedit.model.beam import beam_search, brute_force_scores
    from genrecedit.model.decoder import SteppedDecoder

    trie = PrefixTrie(tiny_codes, tiny_layout.sizes)
    dec = SteppedDecoder(tiny_model, tiny_layout.n_positions)
    ids, mask = tiny_layout.encoder_inputs(tiny_histories, tiny_codes)
    width = len(tiny_codes)
    with torch.no_grad():
        plain = beam_search(dec, tiny_layout, trie, ids, mask, beam=width, k=width)
        rec = beam_search(dec, tiny_layout, trie, ids, mask, beam=width, k=width, record_levels=True)
        exact = brute_force_scores(dec, tiny_layout, ids, mask, tiny_codes)
    assert torch.equal(plain.items, rec.items) and torch.equal(plain.scores, rec.scores)
    assert len(rec.levels) == tiny_layout.n_positions - 1
    for level, (nodes, scores) in enumerate(rec.levels, start=1):
        item_nodes = torch.as_tensor(trie.item_nodes(level))
        for row in range(len(nodes)):
            for node, score in zip(nodes[row], scores[row]):
                if node < 0:
                    continue
                # the prefix probability is the step's own (not renormalised over the trie), so it is at least the
                # summed probability of the catalog items under it
                under = torch.logsumexp(exact[row][item_nodes == node], 0)
                assert float(score) >= float(under) - 1e-4
                assert bool((item_nodes == node).any())


def test_a_history_ending_with_a_new_item_gets_the_novel_budget():
    trie = PrefixTrie(CODES, (2, 2, 4))
    beams = _beams(trie)
    cfg = PriorConfig(enabled=True, budget=0.2, temperature=0.1, threshold=0.5, scope=0, novel_budget=0.6)
    w3, w4, w5 = _w([10.0, 0.0, 6.0], 5.0)
    warm_end = _probs(ContentPrior(cfg, EMB, CODES, NEW, trie).apply(HIST, beams, k=6))
    assert warm_end[3] == pytest.approx(0.2 * w3, rel=1e-5)
    # the same content (item 3's embedding equals item 0's), but the history ends with the new item 3
    novel_end = _probs(ContentPrior(cfg, EMB, CODES, NEW, trie).apply(np.array([[-1, 3]]), beams, k=6))
    assert novel_end[3] == pytest.approx(0.6 * w3, rel=1e-5)
    assert novel_end[0] == pytest.approx(0.5 * (1 - 0.6 * (w3 + w4 + w5)), rel=1e-5)
    with pytest.raises(ConfigError):
        PriorConfig(novel_budget=1.0)


def test_the_budget_grows_with_the_share_of_new_items_among_the_recent_ones():
    trie = PrefixTrie(CODES, (2, 2, 4))
    beams = _beams(trie)
    cfg = PriorConfig(enabled=True, budget=0.2, temperature=0.1, threshold=0.5, scope=0, novel_budget=0.6, recent=2)
    prior = ContentPrior(cfg, EMB, CODES, NEW, trie)
    # one of the two recent items is new: β + ½ (0.6 − β) = 0.4; both are new: 0.6 (item 3 ≡ item 0 in content)
    half = prior.prepare(np.array([[0, 3]]), beams)[0]
    full = prior.prepare(np.array([[3, 3]]), beams)[0]
    assert float(half.novelty[0]) == 0.5 and float(full.novelty[0]) == 1.0
    w3, w4, w5 = _w([10.0, 0.0, 6.0], 5.0)
    assert _probs(prior.apply(np.array([[0, 3]]), beams, k=6))[0] == pytest.approx(
        0.5 * (1 - 0.4 * (w3 + w4 + w5)), rel=1e-5)
    assert float(prior.prepare(np.array([[-1, -1]]), beams)[0].novelty[0]) == 0.0


def test_head_keeps_the_beams_first_picks_in_front_and_the_mixture_orders_the_rest():
    trie = PrefixTrie(CODES, (2, 2, 4))
    beams = _beams(trie)
    cfg = PriorConfig(enabled=True, budget=0.9, temperature=0.1, threshold=0.5, scope=0)
    prior = ContentPrior(cfg, EMB, CODES, NEW, trie)
    free = prior.apply(HIST, beams, k=6)
    assert free.items[0, 0] == 3  # a budget of .9: the matching new item outranks the beam's first pick
    for head in (1, 2):
        kept = ContentPrior(PriorConfig(**{**cfg.__dict__, "head": head}), EMB, CODES, NEW, trie).apply(
            HIST, beams, k=6)
        assert kept.items[0, :head].tolist() == beams.items[0, :head].tolist()
        rest = [i for i in free.items[0].tolist() if i not in beams.items[0, :head].tolist()]
        assert kept.items[0, head:].tolist() == rest[:6 - head]
        # every item keeps its mixture score, wherever it is ranked
        assert _probs(kept) == pytest.approx({i: p for i, p in _probs(free).items() if i in _probs(kept)})
    # one mixture, several heads: the same lists as one mix per head
    prepared = prior.prepare(HIST, beams)
    many = prior.mix_heads(prepared, 6, cfg, (0, 1, 3))
    for head, out in many.items():
        one = prior.mix(prepared, 6, PriorConfig(**{**cfg.__dict__, "head": head}))
        assert torch.equal(out.items, one.items) and torch.equal(out.scores, one.scores)
    with pytest.raises(ConfigError):
        PriorConfig(head=-1)


def test_a_stratified_setting_mixes_each_kind_of_history_with_its_own_setting():
    """Histories ending with a new item take ``novel``'s setting, the others the top one (or the beam's list with
    ``novel_only``; or the other way round with ``novel.enabled`` false) — row by row within one call."""
    trie = PrefixTrie(CODES, (2, 2, 4))
    one = _beams(trie)
    beams = Beams(one.items.repeat(2, 1), one.scores.repeat(2, 1), one.sids.repeat(2, 1, 1),
                  [(n.repeat(2, 1), s.repeat(2, 1)) for n, s in one.levels])
    histories = np.array([[-1, 0], [-1, 3]])  # the same content; the second history ends with the new item 3
    rest_cfg = PriorConfig(enabled=True, budget=0.2, temperature=0.1, threshold=0.5, scope=0)
    novel_cfg = PriorConfig(enabled=True, budget=0.6, temperature=0.1, threshold=0.5, scope=1)

    def alone(cfg: PriorConfig, row: int) -> Beams:
        return ContentPrior(cfg, EMB, CODES, NEW, trie).apply(histories[row:row + 1], one, k=6)

    both = ContentPrior(PriorConfig(**{**rest_cfg.__dict__, "novel": novel_cfg}), EMB, CODES, NEW, trie)
    out = both.apply(histories, beams, k=6)
    assert both.ends_new(histories).tolist() == [False, True]
    for row, cfg in ((0, rest_cfg), (1, novel_cfg)):
        ref = alone(cfg, row)
        assert torch.equal(out.items[row], ref.items[0]) and torch.allclose(out.scores[row], ref.scores[0])
    assert not torch.equal(out.items[0], out.items[1])  # the two settings differ on these histories
    # novel_only: a history ending with a warm item keeps the beam's list exactly
    only = ContentPrior(PriorConfig(**{**rest_cfg.__dict__, "novel": novel_cfg, "novel_only": True}), EMB, CODES,
                        NEW, trie).apply(histories, beams, k=6)
    assert only.items[0, :3].tolist() == [0, 1, 2] and (only.items[0, 3:] == -1).all()
    assert torch.equal(only.items[1], out.items[1])
    # novel disabled: a history ending with a new item keeps the beam's list
    off = ContentPrior(PriorConfig(**{**rest_cfg.__dict__, "novel": PriorConfig(enabled=False)}), EMB, CODES, NEW,
                       trie).apply(histories, beams, k=6)
    assert torch.equal(off.items[0], out.items[0]) and off.items[1, :3].tolist() == [0, 1, 2]


def test_stratified_settings_load_from_plain_mappings_and_refuse_nesting():
    from genrecedit.config import RunConfig, _build

    cfg = PriorConfig.of({"enabled": True, "budget": 0.2, "novel": {"budget": 0.6, "head": 1}, "novel_only": False})
    assert cfg.novel == PriorConfig(budget=0.6, head=1) and cfg.stratified
    loaded = _build(RunConfig, {"prior": {"enabled": True, "novel": {"budget": 0.6}, "novel_only": True}}, "")
    assert loaded.prior.novel.budget == 0.6 and loaded.prior.novel_only
    with pytest.raises(ConfigError, match="novel"):
        PriorConfig(novel=PriorConfig(novel=PriorConfig()))
    with pytest.raises(ConfigError, match="novel_only"):
        PriorConfig(novel_only=True)
    with pytest.raises(ConfigError, match="unknown"):
        _build(RunConfig, {"prior": {"novel": {"bugdet": 0.6}}}, "")


def test_settings_mixed_from_one_preparation_equal_each_mixed_alone():
    """A grid mixes many settings from one ``prepare``; what the new items' pass caches (per temperature,
    threshold and k) must give each setting exactly its own mixture, whichever setting came first."""
    trie = PrefixTrie(CODES, (2, 2, 4))
    beams = _beams(trie)
    hist = np.array([[-1, 0], [0, 3], [-1, -1], [2, 1]])
    beams = Beams(beams.items.repeat(4, 1), beams.scores.repeat(4, 1), beams.sids.repeat(4, 1, 1),
                  [(n.repeat(4, 1), s.repeat(4, 1)) for n, s in beams.levels])
    base = PriorConfig(enabled=True, budget=0.2, temperature=0.1, threshold=0.5, scope=1)
    settings = [base, PriorConfig(**{**base.__dict__, "budget": 0.6}),
                PriorConfig(**{**base.__dict__, "threshold": 0.2}),
                PriorConfig(**{**base.__dict__, "temperature": 0.2}),
                PriorConfig(**{**base.__dict__, "novel_budget": 0.9})]
    prior = ContentPrior(base, EMB, CODES, NEW, trie)
    shared = prior.prepare(hist, beams)
    for k in (6, 2):
        for cfg in settings + settings[::-1]:
            got = prior.mix(shared, k, cfg)
            alone = prior.mix(prior.prepare(hist, beams), k, cfg)
            assert torch.equal(got.items, alone.items) and torch.equal(got.scores, alone.scores)
    assert len(shared[0].ranked) == 3 * 2  # (τ, θ) pairs × k values: the budgets shared a pass
    moved = prior.mix(shared, 6, settings[1])
    assert not torch.equal(moved.scores, prior.mix(shared, 6, settings[0]).scores)  # the budget still matters
