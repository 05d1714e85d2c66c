"""The literature's disentanglement scores, so ACC's UFR can be set beside published numbers.

- `mig`: the Mutual Information Gap (Chen et al. 2018, "Isolating sources of disentanglement in
  VAEs"), computed the way disentanglement_lib does: every latent dimension is discretised into
  `bins` equal-width bins over its range, MI is measured per (dimension, concept) in nats from the
  joint histogram, divided by the concept's entropy, and the gap between the two most informative
  dimensions is averaged over concepts. Continuous concepts are discretised like the codes; class
  concepts are used as they are.
- `dci`: Disentanglement, Completeness and Informativeness (Eastwood & Williams 2018, "A framework
  for the quantitative evaluation of disentangled representations"). An importance matrix R
  [dimensions x concepts] comes from one predictor per concept fitted on a training split;
  disentanglement of dimension i is `1 - H_K(R_i. / sum_k R_ik)` (entropy base K = number of
  concepts), averaged with weights `sum_k R_ik / sum R`; completeness of concept j is `1 -
  H_D(R_.j / sum_i R_ij)` (base D = dimensions), averaged with weights `sum_i R_ij / sum R`;
  informativeness is the predictor's score on a held-out split. Each concept's importances are
  normalised to sum to 1, so concepts weigh alike whatever their scale.

These are per latent *dimension*; UFR (acc.eval.ufr) is per slot group. Both take the same
`Concept`s; numpy, scipy and scikit-learn only.
"""

from __future__ import annotations

import math

import numpy as np

from acc.eval.ufr import Concept, check_codes, check_concepts

MIG_BINS = 20
LASSO_ALPHA = 0.01  # on standardised codes and a standardised target (per one-hot column for classes)
_EPS = 1e-12


def _check(codes, concepts: list[Concept]) -> np.ndarray:
    codes = check_codes(codes, 20)
    check_concepts(concepts, codes.shape[0])
    return codes


# ---- MIG -----------------------------------------------------------------------------------------
def _discretise(x: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bins over each column's range (as numpy.histogram's edges), 0..bins-1; x [N, D]."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    width = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(np.floor((x - lo) / width * bins), 0, bins - 1).astype(np.int64)


def _entropy(labels: np.ndarray) -> float:
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _mutual_info(binned: np.ndarray, labels: np.ndarray, bins: int) -> np.ndarray:
    """MI in nats [D] between each binned column of binned [N, D] and labels [N] (0..m-1)."""
    n, d = binned.shape
    m = int(labels.max()) + 1
    cells = (np.arange(d)[None, :] * bins + binned) * m + labels[:, None]
    joint = np.bincount(cells.ravel(), minlength=d * bins * m).reshape(d, bins, m) / n
    px = joint.sum(axis=2, keepdims=True)
    py = joint.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / (px * py)), 0.0)
    return np.maximum(terms.sum(axis=(1, 2)), 0.0)


def mig(codes: np.ndarray, concepts: list[Concept], bins: int = MIG_BINS) -> dict:
    """Mutual Information Gap of codes [N, D] for the concepts (disentanglement_lib's definition).

    Returns {"mig": mean over concepts (None if none has entropy), "per_concept": {name: {"mig",
    "top_dims": [best, second], "entropy"}}, "bins", "notes"}. With one dimension, the gap is the
    best dimension's normalised MI."""
    codes = _check(codes, concepts)
    if not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    binned = _discretise(codes, bins)
    per, notes = {}, []
    for c in concepts:
        values = np.asarray(c.values)
        labels = (_discretise(values.astype(np.float64)[:, None], bins)[:, 0] if c.kind == "continuous"
                  else values.astype(np.int64))
        h = _entropy(labels)
        if h <= _EPS:
            notes.append(f"{c.name}: constant; no MIG")
            per[c.name] = {"mig": None, "top_dims": [], "entropy": 0.0}
            continue
        mi = _mutual_info(binned, labels, bins) / h
        order = np.argsort(-mi, kind="stable")
        gap = mi[order[0]] - (mi[order[1]] if len(order) > 1 else 0.0)
        per[c.name] = {"mig": float(gap), "top_dims": [int(i) for i in order[:2]], "entropy": h}
    scored = [v["mig"] for v in per.values() if v["mig"] is not None]
    return {"mig": float(np.mean(scored)) if scored else None, "per_concept": per, "bins": int(bins), "notes": notes}


# ---- DCI -----------------------------------------------------------------------------------------
def _normalised_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy base `base` of each row of p (rows sum to 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1) / math.log(base)


def _lasso(x_train, x_test, c: Concept, values_train, values_test) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import Lasso

    if c.kind == "continuous":
        mean, sd = values_train.mean(), values_train.std()
        sd = sd if sd > 0 else 1.0
        model = Lasso(alpha=LASSO_ALPHA, max_iter=5000).fit(x_train, (values_train - mean) / sd)
        pred = model.predict(x_test) * sd + mean
        return np.abs(model.coef_), _r2(values_test, pred)
    labels = values_train.astype(np.int64)
    m = int(max(labels.max(), values_test.max())) + 1
    onehot = np.eye(m)[labels]
    mean, sd = onehot.mean(axis=0), onehot.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    model = Lasso(alpha=LASSO_ALPHA, max_iter=5000).fit(x_train, (onehot - mean) / sd)
    scores = model.predict(x_test).reshape(len(x_test), m) * sd + mean
    importance = np.abs(np.atleast_2d(model.coef_)).sum(axis=0)  # over the classes
    return importance, float((scores.argmax(axis=1) == values_test.astype(np.int64)).mean())


def _gbt(x_train, x_test, c: Concept, values_train, values_test, seed: int) -> tuple[np.ndarray, float]:
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    if c.kind == "continuous":
        model = GradientBoostingRegressor(random_state=seed).fit(x_train, values_train)
        return model.feature_importances_, _r2(values_test, model.predict(x_test))
    model = GradientBoostingClassifier(random_state=seed).fit(x_train, values_train.astype(np.int64))
    return model.feature_importances_, float((model.predict(x_test) == values_test.astype(np.int64)).mean())


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    sst = ((y - y.mean()) ** 2).sum()
    return float(np.clip(1.0 - ((y - pred) ** 2).sum() / sst, 0.0, 1.0)) if sst > _EPS else 0.0


def dci(codes: np.ndarray, concepts: list[Concept], importance: str = "lasso", test_fraction: float = 0.5,
        seed: int = 0) -> dict:
    """Eastwood & Williams' D, C and I of codes [N, D] for the concepts.

    `importance`: "lasso" (default, fast): per concept a scikit-learn Lasso (alpha LASSO_ALPHA) on
    the codes standardised on the training split, to the standardised concept (a class concept: to
    each standardised one-hot column, argmax for the prediction); importance = absolute
    standardised coefficients (summed over a class concept's columns). "gbt": scikit-learn's
    GradientBoostingRegressor / GradientBoostingClassifier with default settings (disentanglement_lib's
    choice; slow) and their `feature_importances_`. The split: a random `test_fraction` of the
    samples (numpy.random.default_rng(seed)) is held out; informativeness is scored there, as
    clip(R^2, 0, 1) for a continuous concept and accuracy for a class concept.

    Returns {"disentanglement", "completeness", "informativeness", "per_dimension":
    {"disentanglement": [D], "weight": [D]}, "per_concept": {name: {"completeness",
    "informativeness"}}, "importance": [[D x K]], "concepts", "importance_model",
    "informativeness_score", "test_fraction", "notes"}. Disentanglement is None with a single
    concept (an entropy over one concept means nothing)."""
    codes = _check(codes, concepts)
    if importance not in ("lasso", "gbt"):
        raise ValueError(f"importance must be 'lasso' or 'gbt', got {importance!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    n, d = codes.shape
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if min(n_test, n - n_test) < 10:
        raise ValueError(f"{n} samples leave fewer than 10 on one side of the split")
    test, train = order[:n_test], order[n_test:]
    mean, sd = codes[train].mean(axis=0), codes[train].std(axis=0)
    x = (codes - mean) / np.where(sd > 0, sd, 1.0)

    notes, columns, informativeness = [], [], {}
    for c in concepts:
        values = np.asarray(c.values).astype(np.float64)
        if importance == "lasso":
            r, score = _lasso(x[train], x[test], c, values[train], values[test])
        else:
            r, score = _gbt(x[train], x[test], c, values[train], values[test], seed)
        r = np.abs(np.asarray(r, dtype=np.float64))
        total = r.sum()
        if total <= _EPS:
            notes.append(f"{c.name}: no dimension has any importance")
        columns.append(r / total if total > _EPS else np.zeros(d))
        informativeness[c.name] = score
    R = np.stack(columns, axis=1)  # [D, K]
    k = R.shape[1]
    grand = R.sum()

    row = R.sum(axis=1)
    weight = row / grand if grand > _EPS else np.zeros(d)
    if k > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(row[:, None] > _EPS, R / np.where(row > _EPS, row, 1.0)[:, None], 0.0)
        per_dim = np.where(row > _EPS, 1.0 - _normalised_entropy(p, k), 0.0)
        disentanglement = float((per_dim * weight).sum())
    else:
        notes.append("one concept: disentanglement needs at least two")
        per_dim, disentanglement = np.full(d, np.nan), None

    col = R.sum(axis=0)
    if d > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(col[:, None] > _EPS, (R / np.where(col > _EPS, col, 1.0)).T, 0.0)
        per_concept_c = np.where(col > _EPS, 1.0 - _normalised_entropy(q, d), 0.0)
    else:
        per_concept_c = np.where(col > _EPS, 1.0, 0.0)
    completeness = float((per_concept_c * col).sum() / grand) if grand > _EPS else 0.0

    model = ("lasso: sklearn Lasso(alpha=%g), |standardised coefficients|" % LASSO_ALPHA if importance == "lasso"
             else "gbt: sklearn GradientBoosting{Regressor,Classifier}(), feature_importances_")
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness": float(np.mean(list(informativeness.values()))),
        "per_dimension": {"disentanglement": [None if np.isnan(v) else float(v) for v in per_dim],
                          "weight": [float(v) for v in weight]},
        "per_concept": {c.name: {"completeness": float(per_concept_c[j]), "informativeness": informativeness[c.name]}
                        for j, c in enumerate(concepts)},
        "importance": [[float(v) for v in r] for r in R],
        "concepts": [c.name for c in concepts],
        "importance_model": model,
        "informativeness_score": {"continuous": "clip(R2, 0, 1)", "class": "accuracy"},
        "test_fraction": float(test_fraction),
        "notes": notes,
    }
