"""Memory construction (docs/method.md §5.4, paper Eq. 3/8): per request, the δ added to the FFN output at (l_p, p) that
makes the model predict o_p, optimised for all requests of a position as one batch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from genrecedit.edit.keys import TeacherForced
from genrecedit.model.decoder import SteppedDecoder
from genrecedit.model.tokens import TokenLayout


@dataclass
class DeltaConfig:
    """The δ optimiser (docs/method.md §5.4). The paper's lr ≈ 0.5 / ≈ 30 steps left δ unconverged with a
    ``stop_prob`` margin: on game's selection batch (1,832 observed requests, stop_prob 0.9) only 339 of position 1's
    δ reached it, against all of them at lr 1.0 / 100 steps, and teacher-forced efficacy after the update rose from
    0.48/0.37/0.55/0.89 to 0.53/0.54/0.73/0.91 at λ 1,500. A request stops once it converges, so the extra steps cost
    nothing when δ converges early."""

    lr: float = 1.0
    steps: int = 100
    norm_penalty: float = 0.2  # weight of ‖δ‖/‖z‖ in the loss
    # A request stops once its target is the argmax (the paper) *and* has at least this probability. Above 0 it
    # leaves a margin that survives the closed-form compromise between many requests and the λ C0 preservation.
    stop_prob: float = 0.0
    compact_below: float = 0.75  # re-gather the active rows when fewer than this share of them is left
    # steps between the host's looks at how many requests are still going (the loop's only device → host sync).
    # The stop rule is applied on the device at every step, so this sets only when the loop may end and re-gather
    # its rows, never a result. None: every step on the CPU, where a look costs nothing and most requests stop
    # within a few steps; every 10 on an accelerator, where each look stalls the queue of kernels
    check_every: int | None = None

    def checks(self, device: torch.device) -> int:
        """``check_every`` resolved for ``device``."""
        if self.check_every is not None:
            return self.check_every
        return 1 if device.type == "cpu" else 10


@dataclass
class Deltas:
    """delta [m, d_model]; converged [m] bool (target became the argmax)."""

    delta: torch.Tensor
    converged: torch.Tensor


Score = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def adam_early_stop(z: torch.Tensor, cfg: DeltaConfig, score: Score, stop_prob: float,
                    compact_below: float = 1.0,
                    compact: Callable[[torch.Tensor], None] | None = None) -> Deltas:
    """The δ optimiser shared by the position-wise (``optimise_deltas``) and object-wise
    (``objectwise.optimise_object_deltas``) edits: one δ per row of z [m, d_model], Adam with cosine decay on
    CE + norm_penalty·‖δ‖/‖z‖.

    ``score(rows, delta[rows])`` -> (ce [r], hit [r] bool): the rows' CE and whether every target is the argmax. A
    row stops once it hits with probability exp(−ce) ≥ ``stop_prob`` (when > 0) and keeps that δ; one that never
    gets there keeps its lowest-CE δ. Every row's optimisation is independent of the others' (Adam is element-wise),
    so the batch only sets how much work a step does.

    The step loop stays on the device: a stopped row is frozen by masks (no gradient, and nothing it scores changes
    its result), and the host reads the number of rows still going only every ``cfg.check_every`` steps, to end the
    loop when none is left and to re-gather the rows scored when fewer than ``compact_below`` of them are (1.0: at
    every look); ``compact(keep)`` is then told which of the previous rows (positions into them) are kept, so a
    caller can gather its own per-row state.
    """
    m = z.shape[0]
    delta = torch.zeros_like(z, requires_grad=True)
    optim = torch.optim.Adam([delta], lr=cfg.lr)
    final = torch.zeros_like(z)
    # per row scored (``rows``, re-gathered at a look): still going, lowest CE so far, ‖z‖
    rows = torch.arange(m, device=z.device)
    live = torch.ones(m, dtype=torch.bool, device=z.device)
    best_ce = torch.full((m,), float("inf"), dtype=z.dtype, device=z.device)
    z_norm = z.norm(dim=1).clamp_min(1e-6)
    check_every = cfg.checks(z.device)
    for step in range(cfg.steps + 1):
        if step % check_every == 0:
            n_live = int(live.sum())  # the only host sync: once every check_every steps
            if n_live == 0:
                break
            if n_live < compact_below * len(rows):
                keep = live.nonzero().squeeze(1)
                if compact is not None:
                    compact(keep)
                rows, live, best_ce, z_norm = rows[keep], live[keep], best_ce[keep], z_norm[keep]
        d = delta[rows]
        ce, hit = score(rows, d)
        with torch.no_grad():
            if stop_prob > 0:
                hit &= torch.exp(-ce) >= stop_prob
            hit &= live
            better = ((ce < best_ce) & live) | hit
            final[rows] = torch.where(better[:, None], d, final[rows])
            best_ce = torch.where(live, torch.minimum(best_ce, ce), best_ce)
            live = live & ~hit
        if step == cfg.steps:
            break  # the last pass only scores the final δ
        loss = ((ce + cfg.norm_penalty * d.norm(dim=1) / z_norm) * live).sum()
        for group in optim.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()  # Adam's momentum still moves stopped rows' δ: the masks above keep it out of every result
    done = torch.ones(m, dtype=torch.bool, device=z.device)  # a row leaves ``rows`` only once it stopped
    done[rows] = ~live
    return Deltas(final, done)


def optimise_deltas(decoder: SteppedDecoder, layout: TokenLayout, tf: TeacherForced, p: int, layer: int,
                    targets: torch.Tensor, z: torch.Tensor, cfg: DeltaConfig) -> Deltas:
    """δ for m teacher-forced requests at (layer, index p).

    targets [m] codes of position p (local, 0..K_p-1); z [m, d_model] the current FFN value at the site (base
    value plus any earlier edit's ΔW k). ``adam_early_stop`` on the position-p CE: a request stops once its target
    is the argmax (with probability ≥ ``stop_prob``) and keeps that δ; one that never gets there keeps its
    lowest-CE δ. Only the layers above ``layer`` run, on the teacher-forced cache of the requests still going.
    """
    base = tf.pre[p][layer] + z  # residual after the FFN sub-layer, before δ
    rows0 = torch.arange(z.shape[0], device=z.device)
    state = {"cache": tf.cache_before(p).select(rows0), "enc": tf.enc.select(rows0)}

    def compact(keep: torch.Tensor) -> None:
        state["cache"], state["enc"] = state["cache"].select(keep), state["enc"].select(keep)

    def score(rows: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = decoder.run_layers(base[rows] + delta, p, state["cache"], state["enc"], layer + 1)
        logits = decoder.logits(h)[:, layout.position_slice(p)]
        ce = F.cross_entropy(logits, targets[rows], reduction="none")
        with torch.no_grad():
            hit = logits.argmax(dim=1) == targets[rows]
        return ce, hit

    return adam_early_stop(z, cfg, score, cfg.stop_prob, cfg.compact_below, compact)
