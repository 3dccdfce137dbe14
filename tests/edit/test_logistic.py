"""The torch logistic regression behind the layer probe and the probe gate (edit/logistic.py): scikit-learn's
objective (StandardScaler + L2 logistic regression at C, intercept unpenalised, optional balanced class weights), many
problems solved at once and each as if alone."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from genrecedit.edit.logistic import _direction, fit_logistic


def _data(seed: int, n: int = 400, d: int = 6, imbalance: float = 0.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < imbalance).astype(np.float64)
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 5.0, d) + rng.uniform(-3, 3, d)
    x[:, 0] += 1.2 * y  # a signal, not a separation: the optimum is finite and well conditioned
    x[:, 1] -= 0.6 * y
    x[:, 2] = 7.0  # a constant feature: StandardScaler leaves it unscaled
    return x, y


def _sklearn(x, y, C, class_weight=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=5000,
                                                                 class_weight=class_weight)).fit(x, y)
    scaler, lr = clf[0], clf[1]
    coef = lr.coef_[0] / scaler.scale_
    return coef, lr.intercept_[0] - (scaler.mean_ * coef).sum()


@pytest.mark.parametrize("C,class_weight,imbalance", [(1.0, None, 0.5), (0.01, None, 0.5),
                                                      (1.0, "balanced", 0.2), (0.05, "balanced", 0.3)])
def test_the_fit_is_sklearns_optimum(C, class_weight, imbalance):
    """Raw-feature coefficients and intercept equal scikit-learn's converged ones, for every fold of a 3-fold split
    fitted at once (each fold standardised on its own training rows), at a strong and a weak penalty and with
    balanced class weights: the penalty is 1/(C·Σ weights) on the mean loss, as in scikit-learn."""
    x, y = _data(0, imbalance=imbalance)
    train = np.ones((3, len(y)), dtype=bool)
    for f in range(3):
        train[f, f::3] = False
    fit = fit_logistic(torch.from_numpy(x)[None], torch.from_numpy(y), torch.from_numpy(train), C=C, tol=1e-9,
                       max_iter=2000, class_weight=class_weight)
    for f in range(3):
        coef, intercept = _sklearn(x[train[f]], y[train[f]], C, class_weight)
        np.testing.assert_allclose(fit.coef[0, f].numpy(), coef, rtol=1e-5, atol=1e-7)
        assert abs(float(fit.intercept[0, f]) - intercept) < 1e-5 * max(1.0, abs(intercept))


def test_problems_fitted_together_equal_each_fitted_alone():
    """Layers with different features and folds with different rows, one call, against one call per problem: the
    per-problem line search and memory make each problem's iterates its own (also when stopped by max_iter)."""
    x = torch.stack([torch.from_numpy(_data(s, n=300, d=10)[0]) for s in range(3)]).float()
    y = torch.from_numpy(_data(0, n=300, d=10)[1])
    rng = np.random.default_rng(1)
    train = torch.from_numpy(rng.random((4, 300)) < 0.75)
    for max_iter in (7, 200):
        together = fit_logistic(x, y, train, tol=1e-4, max_iter=max_iter, layers_at_once=3)
        torch.testing.assert_close(fit_logistic(x, y, train, tol=1e-4, max_iter=max_iter).coef, together.coef,
                                   rtol=1e-4, atol=1e-5)  # the CPU default: one layer at a time
        for layer in range(3):
            for f in range(4):
                alone = fit_logistic(x[layer:layer + 1], y, train[f:f + 1], tol=1e-4, max_iter=max_iter)
                assert int(alone.n_iter[0, 0]) == int(together.n_iter[layer, f])
                torch.testing.assert_close(together.coef[layer, f], alone.coef[0, 0], rtol=1e-4, atol=1e-5)
    assert int(together.n_iter.max()) < 200  # converged before the cap at tol 1e-4


def _two_loop(g, s_hist, y_hist, rho, slot, gamma):
    """The textbook L-BFGS two-loop recursion (Nocedal & Wright alg. 7.4), pairs newest first from ``slot`` − 1."""
    m = s_hist.shape[0]
    order = [(slot - 1 - k) % m for k in range(m)]
    q, alphas = g.clone(), []
    for j in order:
        a = rho[j] * (s_hist[j] * q).sum(1)
        q = q - a[:, None] * y_hist[j]
        alphas.append(a)
    r = gamma[:, None] * q
    for j, a in zip(reversed(order), reversed(alphas)):
        r = r + s_hist[j] * (a - rho[j] * (y_hist[j] * r).sum(1))[:, None]
    return -r


def test_the_compact_lbfgs_direction_is_the_two_loop_recursions():
    """−H g from the compact representation equals the two-loop recursion's, with a ring buffer whose oldest pair
    is mid-way and with empty pairs (ρ = 0: a round without an accepted step, or a slot not yet filled)."""
    gen = torch.Generator().manual_seed(0)
    m, b, d = 10, 6, 30
    a = torch.randn(b, d, d, generator=gen, dtype=torch.float64)
    hess = a @ a.mT + torch.eye(d, dtype=torch.float64)
    s = torch.randn(m, b, d, generator=gen, dtype=torch.float64)
    y = torch.einsum("bij,mbj->mbi", hess, s)
    rho = 1 / (s * y).sum(-1)
    for j, problem in ((3, 2), (7, slice(None))):
        s[j, problem], y[j, problem], rho[j, problem] = 0.0, 0.0, 0.0
    g = torch.randn(b, d, generator=gen, dtype=torch.float64)
    gamma = torch.rand(b, generator=gen, dtype=torch.float64) + 0.5
    for slot in (0, 4):
        torch.testing.assert_close(_direction(g, s, y, rho, slot, gamma), _two_loop(g, s, y, rho, slot, gamma),
                                   rtol=1e-10, atol=1e-12)


def test_decision_scores_raw_features():
    x, y = _data(2)
    xt = torch.from_numpy(x)[None]
    fit = fit_logistic(xt, torch.from_numpy(y), torch.ones(1, len(y), dtype=torch.bool), tol=1e-8, max_iter=500)
    scores = fit.decision(xt)[0, 0]
    torch.testing.assert_close(scores, xt[0] @ fit.coef[0, 0] + fit.intercept[0, 0])
    assert float(((scores > 0).double() == torch.from_numpy(y)).double().mean()) > 0.6


def test_bad_shapes_and_class_weights_are_refused():
    x = torch.zeros(1, 5, 3)
    with pytest.raises(ValueError, match="expected"):
        fit_logistic(x, torch.zeros(4), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="class_weight"):
        fit_logistic(x, torch.zeros(5), torch.ones(1, 5, dtype=torch.bool), class_weight="auto")
