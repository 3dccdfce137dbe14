"""L2-regularised logistic regression in torch, many problems at once (the layer probe and the probe gate).

Each problem (l, f) fits rows ``train[f]`` of the features ``x[l]`` and is solved as scikit-learn's
``make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=tol, max_iter=max_iter))`` solves it: the features
standardised with the problem's own training rows (population std, constant features left unscaled), then

    min_{w, b}  Σ_i s_i log(1 + exp(−y_i (w·x_i + b))) / S  +  ‖w‖² / (2 C S),      S = Σ_i s_i

(s_i the sample weights, 1 or scikit-learn's ``class_weight="balanced"``; the intercept is not penalised), by L-BFGS
stopped once every gradient entry is within ``tol`` or after ``max_iter`` iterations — scikit-learn's criterion for
its lbfgs solver. Every problem keeps its own two-loop recursion, step and stopping; one problem's iterate never
depends on another's. The standardisation is folded into the weights, so all problems of a layer share one copy of its
features and an iteration costs two batched matrix products over them, on the features' device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LogisticFit:
    """coef [L, F, d] and intercept [L, F] on the raw features (the standardisation folded in): problem (l, f)
    scores x[l] as x[l] @ coef[l, f] + intercept[l, f]. n_iter [L, F]: L-BFGS iterations each problem ran."""

    coef: torch.Tensor
    intercept: torch.Tensor
    n_iter: torch.Tensor

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        """x [L, N, d] -> [L, F, N] scores (> 0: class 1)."""
        return torch.baddbmm(self.intercept[..., None].to(x.dtype), self.coef.to(x.dtype), x.transpose(1, 2))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, C: float = 1.0, tol: float = 1e-3,
                 max_iter: int = 200, class_weight: str | None = None, history: int = 10,
                 layers_at_once: int | None = None) -> LogisticFit:
    """L × F binary logistic regressions (module docstring). x [L, N, d] float; y [N] in {0, 1}; train [F, N] bool,
    the rows problem (·, f) is fitted on (every layer uses the same rows); ``class_weight``: None or "balanced".

    ``layers_at_once``: how many layers' problems one L-BFGS run takes (the result does not depend on it, each
    problem being solved as if alone). Default: all of them on a GPU; one on the CPU, where a layer's features
    (N × d floats, 16 MB on game) then stay in the cache across iterations, ≈ 1.5× faster on game's probe than all
    four layers' (64 MB) streamed from memory every iteration."""
    if x.ndim != 3 or train.ndim != 2 or train.shape[1] != x.shape[1] or y.shape != (x.shape[1],):
        raise ValueError(f"x [L, N, d], y [N] and train [F, N] expected, got {tuple(x.shape)}, {tuple(y.shape)}, "
                         f"{tuple(train.shape)}")
    step = layers_at_once or (x.shape[0] if x.device.type == "cuda" else 1)
    if step < x.shape[0]:
        parts = [fit_logistic(x[i:i + step], y, train, C, tol, max_iter, class_weight, history, step)
                 for i in range(0, x.shape[0], step)]
        return LogisticFit(torch.cat([f.coef for f in parts]), torch.cat([f.intercept for f in parts]),
                           torch.cat([f.n_iter for f in parts]))
    n_layers, _, d = x.shape
    n_folds = train.shape[0]
    dtype, device = x.dtype, x.device
    y = y.to(device, dtype)
    train = train.to(device)
    weight = train.to(dtype)  # [F, N]
    if class_weight == "balanced":
        n_pos = (weight * y).sum(1, keepdim=True)
        n_all = weight.sum(1, keepdim=True)
        weight = weight * torch.where(y.bool(), n_all / (2 * n_pos.clamp_min(1)),
                                      n_all / (2 * (n_all - n_pos).clamp_min(1)))
    elif class_weight is not None:
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    total = weight.sum(1).clamp_min(1e-12)  # S [F]

    # standardisation of each (layer, problem) over its training rows, on features centred per layer first (the
    # folds' means are then small next to the spread: no cancellation in the variance)
    xc = x - x.mean(1, keepdim=True)
    counts = train.sum(1).clamp_min(1).to(dtype)[None, :, None]  # [1, F, 1]
    rows = train.to(dtype)[None].expand(n_layers, -1, -1)  # [L, F, N]
    mean = torch.bmm(rows, xc) / counts  # [L, F, d]
    var = (torch.bmm(rows, xc * xc) / counts - mean * mean).clamp_min(0)
    # scikit-learn's constant-feature test (sklearn.preprocessing._data._is_constant_feature): scale 1 there
    eps = torch.finfo(torch.float64).eps
    n = counts
    raw_mean = mean + x.mean(1)[:, None, :]
    constant = var <= n * eps * var + (n * raw_mean.abs() * eps) ** 2
    scale = torch.where(constant, torch.ones_like(var), var.sqrt())

    signs = (2 * y - 1)[None, None, :]  # ±1 [1, 1, N]
    sw = (weight / total[:, None])[None]  # [1, F, N]: s_i / S
    reg = (1.0 / (C * total))[None, :, None]  # [1, F, 1]
    xt = xc.transpose(1, 2)  # [L, d, N]: the products below run as [F, d] x [d, N] and [F, N] x [N, d]

    def loss_grad(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """theta [L, F, d + 1] (standardised weights, intercept) -> objective [L, F] float64, gradient [L, F, d + 1]."""
        w, b = theta[..., :d], theta[..., d:]
        v = w / scale
        c = b - (mean * v).sum(-1, keepdim=True)
        margin = signs * torch.baddbmm(c, v, xt)  # [L, F, N]
        obj = ((sw * F.softplus(-margin)).sum(-1, dtype=torch.float64)
               + 0.5 * reg[..., 0].double() * (w * w).sum(-1, dtype=torch.float64))
        r = -sw * signs * torch.sigmoid(-margin)  # d obj / d score [L, F, N]
        gv = torch.bmm(r, xc)  # [L, F, d]
        gc = r.sum(-1, keepdim=True)  # [L, F, 1]
        return obj, torch.cat([(gv - gc * mean) / scale + reg * w, gc], -1)

    theta, n_iter = _lbfgs(loss_grad, torch.zeros(n_layers, n_folds, d + 1, dtype=dtype, device=device), tol,
                           max_iter, history)
    v = theta[..., :d] / scale
    return LogisticFit(v, theta[..., d] - (mean * v).sum(-1) - (x.mean(1)[:, None, :] * v).sum(-1), n_iter)


def _lbfgs(loss_grad, theta: torch.Tensor, tol: float, max_iter: int, history: int,
           c1: float = 1e-4, max_backtracks: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise B independent smooth convex objectives at once. theta [..., D] (leading dims: the problems);
    ``loss_grad(theta)`` -> (objective [...] float64, gradient [..., D]).

    L-BFGS with a per-problem two-loop recursion and a backtracking (Armijo, quadratic interpolation) step; the first
    step of each problem is 1/‖g‖ along −g, as in scipy's L-BFGS-B. Each round evaluates every problem once, at its
    own trial point: a problem whose trial fails backtracks in the next round while the others go on, so one
    problem's rejected step never costs the others an evaluation. The (s, y) memory holds the last ``history``
    rounds (a round without an accepted step leaves an empty pair). A problem stops once max |g| ≤ tol, after
    ``max_iter`` accepted steps, or when ``max_backtracks`` trials along one direction all fail (round-off floor).
    Returns (theta, accepted steps per problem)."""
    shape = theta.shape[:-1]
    theta = theta.reshape(-1, theta.shape[-1])
    b, dim = theta.shape

    def fg(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f_, g_ = loss_grad(t.reshape(*shape, dim))
        return f_.reshape(b), g_.reshape(b, dim)

    f, g = fg(theta)
    s_hist = theta.new_zeros(history, b, dim)
    y_hist = theta.new_zeros(history, b, dim)
    rho = theta.new_zeros(history, b)  # 0: an empty pair, a no-op in the recursion
    gamma = theta.new_ones(b)
    n_iter = torch.zeros(b, dtype=torch.long, device=theta.device)
    backtracks = torch.zeros(b, dtype=torch.long, device=theta.device)
    active = (g.abs().amax(1) > tol) & (max_iter > 0)
    direction = -g
    slope = -(g * g).sum(1, dtype=torch.float64)
    step = 1.0 / g.norm(dim=1, dtype=torch.float64).clamp_min(1e-30)
    slot = 0
    while bool(active.any()):
        trial = theta + (step * active).to(theta.dtype)[:, None] * direction
        f_try, g_try = fg(trial)
        accept = active & (f_try <= f + c1 * step * slope)
        reject = active & ~accept
        # rejected: backtrack along the same direction (minimum of the quadratic through f, slope and f_try)
        t_quad = -slope * step * step / (2 * (f_try - f - slope * step)).clamp_min(1e-300)
        step = torch.where(reject, torch.minimum(torch.maximum(t_quad, 0.1 * step), 0.5 * step), step)
        backtracks = (backtracks + 1) * reject
        # accepted: store (s, y), move, and take the next direction
        s = (trial - theta) * accept[:, None]
        yv = (g_try - g) * accept[:, None]
        sy = (s * yv).sum(1)
        yy = (yv * yv).sum(1)
        keep = accept & (sy > 1e-10 * yy) & (yy > 0)
        s_hist[slot], y_hist[slot] = s, yv
        rho[slot] = torch.where(keep, 1.0 / torch.where(keep, sy, 1.0), 0.0)
        gamma = torch.where(keep, sy / torch.where(keep, yy, 1.0), gamma)
        slot = (slot + 1) % history
        theta = torch.where(accept[:, None], trial, theta)
        f = torch.where(accept, f_try, f)
        g = torch.where(accept[:, None], g_try, g)
        n_iter += accept
        active &= ~(accept & ((g.abs().amax(1) <= tol) | (n_iter >= max_iter))) & (backtracks < max_backtracks)
        new_dir = _direction(g, s_hist, y_hist, rho, slot, gamma)
        new_slope = (g * new_dir).sum(1, dtype=torch.float64)
        bad = new_slope >= 0  # not a descent direction (round-off): restart from the gradient
        direction = torch.where((accept & ~bad)[:, None], new_dir, torch.where(accept[:, None], -g, direction))
        slope = torch.where(accept, torch.where(bad, -(g * g).sum(1, dtype=torch.float64), new_slope), slope)
        step = torch.where(accept, 1.0, step)
    return theta.reshape(*shape, dim), n_iter.reshape(shape)


def _direction(g: torch.Tensor, s_hist: torch.Tensor, y_hist: torch.Tensor, rho: torch.Tensor, slot: int,
               gamma: torch.Tensor) -> torch.Tensor:
    """−H g for each problem's L-BFGS inverse-Hessian estimate H (initial γ I, the pairs of ``s_hist``/``y_hist``
    [m, B, D], the oldest at ``slot``; ρ = 0 marks an empty pair). The compact form of Byrd, Nocedal and Schnabel
    (Nocedal & Wright eq. 7.24): the same H as the two-loop recursion, in a few batched products and two m × m
    triangular solves instead of 4m small steps (it equals the two-loop recursion: tests/edit/test_logistic.py)."""
    S = s_hist.roll(-slot, 0).transpose(0, 1)  # [B, m, D], oldest pair first
    Y = y_hist.roll(-slot, 0).transpose(0, 1)
    empty = (rho.roll(-slot, 0) == 0).T.to(torch.float64)  # [B, m]
    sy = torch.bmm(S, Y.transpose(1, 2)).double()  # s_i·y_j
    yy = torch.bmm(Y, Y.transpose(1, 2)).double()
    a = torch.bmm(S, g[..., None]).double()  # Sᵀg [B, m, 1]
    b = torch.bmm(Y, g[..., None]).double()
    gam = gamma.double()[:, None, None]
    # R: upper triangle of SᵀY; an empty pair gets a unit diagonal and, with s = y = 0, contributes nothing
    r = torch.triu(sy) + torch.diag_embed(empty)
    u = torch.linalg.solve_triangular(r, a, upper=True)
    w = torch.diagonal(sy, dim1=1, dim2=2)[..., None] * u + gam * torch.bmm(yy, u) - gam * b
    p = torch.linalg.solve_triangular(r.transpose(1, 2), w, upper=False)
    hg = (gamma[:, None] * g + torch.bmm(S.transpose(1, 2), p.to(g.dtype))[..., 0]
          - gamma[:, None] * torch.bmm(Y.transpose(1, 2), u.to(g.dtype))[..., 0])
    return -hg
