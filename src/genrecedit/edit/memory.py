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
    gets there keeps its lowest-CE δ. The rows scored are re-gathered to the unfinished ones when fewer than
    ``compact_below`` of them are left (1.0: every step); ``compact(keep)`` is then told which of the previous
    rows (positions into them) are kept, so a caller can gather its own per-row state.
    """
    device = z.device
    m = z.shape[0]
    z_norm = z.norm(dim=1).clamp_min(1e-6)
    delta = torch.zeros_like(z, requires_grad=True)
    optim = torch.optim.Adam([delta], lr=cfg.lr)
    final = torch.zeros_like(z)
    best_ce = torch.full((m,), float("inf"), device=device)
    done = torch.zeros(m, dtype=torch.bool, device=device)
    rows = torch.arange(m, device=device)
    for step in range(cfg.steps + 1):
        active = rows[~done[rows]]
        if len(active) == 0:
            break
        if len(active) < compact_below * len(rows):
            if compact is not None:
                compact((~done[rows]).nonzero().squeeze(1))
            rows = active
        ce, hit = score(rows, delta[rows])
        with torch.no_grad():
            if stop_prob > 0:
                hit &= torch.exp(-ce) >= stop_prob
            better = (ce < best_ce[rows]) | hit
            upd = rows[better]
            final[upd] = delta[upd].detach()
            best_ce[rows] = torch.minimum(best_ce[rows], ce.detach())
            done[rows[hit]] = True
        if step == cfg.steps:
            break  # the last pass only scores the final δ
        penalty = cfg.norm_penalty * delta[rows].norm(dim=1) / z_norm[rows]
        loss = ((ce + penalty) * (~hit)).sum()
        for group in optim.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        with torch.no_grad():  # Adam's momentum must not move requests that already stopped
            delta[done] = final[done]
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
