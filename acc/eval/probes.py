"""The probes behind UFR (`ufr`), on numpy arrays: a ridge fitted on a group of latent dimensions,
its scores, and the information scale on which locality is measured.

Probe. A linear ridge, refitted for every (context, seed): on `z[S(c)]` standardised on the
fitting data (each dimension to mean 0, sd 1; a dimension constant there gets weight 0), with an
intercept, minimising `mean squared error + RIDGE_ALPHA * |w|^2` (`RIDGE_ALPHA` = 1e-3, a
per-sample penalty: negligible for hundreds of samples, it only keeps near-singular fits stable).
A continuous concept is regressed directly and scored `clip(R^2, 0, 1)` (R^2 against the scored
samples' own mean); a class concept is regressed onto its one-hot code, the prediction is the
argmax, and the score is the chance-corrected balanced accuracy `(bacc - 1/m)/(1 - 1/m)` clipped
at 0, `m` being the number of classes present among the scored samples (a scored set with fewer
than two classes has no score).

Information. `L` needs an information scale, where saturating R^2 or accuracy do not hide a leak:
`info = -1/2 log(1 - R^2)` nats (held-out R^2, clipped to [0, 1 - 1e-6]) for a continuous concept,
and `log m - cross-entropy` nats for a class concept (clipped at 0), where the class
probabilities are a softmax over the same ridge's one-hot scores times one temperature factor
`beta`, fitted by maximum likelihood on the fit half (scores on the held-out half). The slot x
concept information matrix (`slot_info`) has it for every single slot and concept: fit on the whole
fit half, scored on the score half, averaged over the seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RIDGE_ALPHA = 1e-3  # per-sample ridge penalty on standardised features
R2_MAX = 1 - 1e-6  # R^2 is clipped here before -1/2 log(1 - R^2)
BETA_MAX = 1e3  # the softmax temperature factor of a class probe stays below this
EPS = 1e-12


@dataclass
class Target:
    """A concept prepared for the probes."""

    name: str
    kind: str
    Y: np.ndarray  # [N, k]: the standardised value (k = 1), or the one-hot code (k = m)
    labels: np.ndarray | None  # [N] int for a class concept
    m: int  # classes (1 for continuous)


# ---- the probe ---------------------------------------------------------------------------------
def ridge(X: np.ndarray, Y: np.ndarray, fits: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ridge fits of Y [N, k] on X [N, d], one per index array in `fits`.

    Each fit standardises X on its own samples. Returns weights [K, d, k] and intercepts [K, k] in
    the units of X, so that `X @ w[j] + b[j]` is fit j's prediction for every sample."""
    d = X.shape[1]
    A = np.concatenate([np.ones((X.shape[0], 1)), X, Y], axis=1)  # [N, p]
    M = np.stack([A[idx].T @ A[idx] for idx in fits])  # sufficient statistics [K, p, p]
    cnt = np.maximum(M[:, 0, 0], 1.0)
    mx = M[:, 0, 1:1 + d] / cnt[:, None]
    my = M[:, 0, 1 + d:] / cnt[:, None]
    cxx = M[:, 1:1 + d, 1:1 + d] / cnt[:, None, None] - mx[:, :, None] * mx[:, None, :]
    cxy = M[:, 1:1 + d, 1 + d:] / cnt[:, None, None] - mx[:, :, None] * my[:, None, :]
    var = np.einsum("kii->ki", cxx)
    inv_sd = np.where(var > 1e-12, 1.0 / np.sqrt(np.maximum(var, 1e-300)), 0.0)  # [K, d]
    cs = cxx * inv_sd[:, :, None] * inv_sd[:, None, :] + RIDGE_ALPHA * np.eye(d)[None]
    beta = np.linalg.solve(cs, cxy * inv_sd[:, :, None])  # [K, d, k] on the standardised scale
    w = beta * inv_sd[:, :, None]
    b = my - np.einsum("kd,kdj->kj", mx, w)
    return w, b


def predict(X: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, K, k] predictions of the K fits for all samples."""
    K, d, k = w.shape
    return (X @ w.transpose(1, 0, 2).reshape(d, K * k)).reshape(-1, K, k) + b[None]


def r2(y: np.ndarray, pred: np.ndarray, scored: list[np.ndarray]) -> np.ndarray:
    """R^2 [K_fit, K_score] of predictions pred [N, K_fit], each scored on each index array."""
    err = (y[:, None] - pred) ** 2
    out = np.full((pred.shape[1], len(scored)), np.nan)
    for j, idx in enumerate(scored):
        yb = y[idx]
        sst = ((yb - yb.mean()) ** 2).sum() if len(idx) else 0.0
        if sst > EPS:
            out[:, j] = 1.0 - err[idx].sum(axis=0) / sst
    return out


def chance_bacc(labels: np.ndarray, onehot: np.ndarray, scores: np.ndarray, scored: list[np.ndarray]) -> np.ndarray:
    """Chance-corrected balanced accuracy [K_fit, K_score] of argmax(scores) [N, K_fit, m]."""
    correct = (scores.argmax(axis=2) == labels[:, None]).astype(np.float64)  # [N, Kf]
    out = np.full((scores.shape[1], len(scored)), np.nan)
    for j, idx in enumerate(scored):
        totals = onehot[idx].sum(axis=0)  # [m]
        present = totals > 0
        m_b = int(present.sum())  # classes present in the scored set
        if m_b < 2:
            continue
        recall = (correct[idx].T @ onehot[idx])[:, present] / totals[present]  # [Kf, m_b]
        chance = 1.0 / m_b
        out[:, j] = np.maximum((recall.mean(axis=1) - chance) / (1.0 - chance), 0.0)
    return out


def scores(t: Target, X: np.ndarray, fits: list[np.ndarray], scored: list[np.ndarray]) -> np.ndarray:
    """P-style scores [K_fit, K_score]: probes fitted on each of `fits`, scored on each of `scored`."""
    w, b = ridge(X, t.Y, fits)
    pred = predict(X, w, b)
    if t.kind == "continuous":
        return np.clip(r2(t.Y[:, 0], pred[:, :, 0], scored), 0.0, 1.0)
    return chance_bacc(t.labels, t.Y, pred, scored)


# ---- information -------------------------------------------------------------------------------
def _infor2(r2: float) -> float:
    return -0.5 * math.log(1.0 - min(max(r2, 0.0), R2_MAX))


def softmax_beta(s: np.ndarray, labels: np.ndarray) -> float:
    """Maximum-likelihood temperature factor beta >= 0 of softmax(beta * s); CE is convex in beta.

    Safeguarded Newton on the derivative (bisection inside a shrinking bracket [0, BETA_MAX])."""
    s_true = s[np.arange(len(s)), labels]

    def grad_hess(beta: float) -> tuple[float, float]:
        z = beta * s
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        mean_s = (p * s).sum(axis=1)
        var_s = (p * s * s).sum(axis=1) - mean_s ** 2
        return float((mean_s - s_true).mean()), float(var_s.mean())

    lo, hi = 0.0, BETA_MAX
    g, h = grad_hess(hi)
    if g <= 0:  # still improving at the cap
        return hi
    beta = 1.0
    for _ in range(60):
        g, h = grad_hess(beta)
        if abs(g) < 1e-9:
            break
        if g < 0:
            lo = beta
        else:
            hi = beta
        step = beta - g / h if h > EPS else np.nan
        beta = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo < 1e-6 * max(1.0, hi):
            break
    return beta


def info_class(scores_fit, labels_fit, scores_test, labels_test, m: int) -> float:
    beta = softmax_beta(scores_fit, labels_fit)
    z = beta * scores_test
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ce = -float(logp[np.arange(len(labels_test)), labels_test].mean())
    return max(math.log(m) - ce, 0.0)


def heldout_info(X: np.ndarray, targets: list[Target], halves: np.ndarray,
                  reduce_to: int | None = None) -> np.ndarray:
    """Information [len(targets)] of one group of dimensions X [N, d] about each target: fit on
    each seed's fit half, score on its other half, mean over seeds. With `reduce_to`, X is first
    projected onto its top principal components (fitted on the fit half)."""
    Y = np.concatenate([t.Y for t in targets], axis=1)
    cols = np.cumsum([0] + [t.Y.shape[1] for t in targets])
    total = np.zeros(len(targets))
    for fit in halves:
        Xs = X
        if reduce_to is not None and reduce_to < X.shape[1]:
            centred = X[fit] - X[fit].mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            Xs = X @ vt[:reduce_to].T
        w, b = ridge(Xs, Y, [np.flatnonzero(fit)])
        pred = predict(Xs, w, b)[:, 0]
        test = ~fit
        for i, t in enumerate(targets):
            p = pred[:, cols[i]:cols[i + 1]]
            if t.kind == "continuous":
                y = t.Y[:, 0]
                sst = ((y[test] - y[test].mean()) ** 2).sum()
                r2 = 1.0 - ((y[test] - p[test, 0]) ** 2).sum() / sst if sst > EPS else 0.0
                total[i] += _infor2(r2)
            else:
                total[i] += info_class(p[fit], t.labels[fit], p[test], t.labels[test], t.m)
    return total / len(halves)
