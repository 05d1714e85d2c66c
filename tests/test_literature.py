"""MIG and DCI (acc.eval.literature) on codes whose structure is known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acc.eval.literature import dci, mig
from acc.eval.ufr import Concept

N = 3000
D = 10


def concepts(seed: int = 0, n: int = N, classes: int = 10) -> list[Concept]:
    rng = np.random.default_rng(seed)
    return [Concept("thickness", rng.uniform(1, 4, n), "continuous"),
            Concept("slant", rng.standard_normal(n), "continuous"),
            Concept("digit", rng.integers(0, classes, n), "class")]


def one_dim_each(cs: list[Concept], seed: int = 1, noise: float = 0.01) -> np.ndarray:
    """Dimension j is concept j (plus a little noise); the remaining dimensions are noise."""
    rng = np.random.default_rng(seed)
    n = len(cs[0].values)
    z = rng.standard_normal((n, D))
    for j, c in enumerate(cs):
        v = np.asarray(c.values, dtype=np.float64)
        z[:, j] = (v - v.mean()) / v.std() + noise * rng.standard_normal(n)
    return z


def rotated(z: np.ndarray, seed: int = 2) -> np.ndarray:
    return z @ np.linalg.qr(np.random.default_rng(seed).standard_normal((D, D)))[0]


def test_mig_one_dimension_per_concept_is_near_one():
    cs = concepts()
    r = mig(one_dim_each(cs), cs)
    assert r["bins"] == 20
    assert r["mig"] > 0.8, r
    for j, c in enumerate(cs):
        assert r["per_concept"][c.name]["top_dims"][0] == j


def test_mig_rotated_code_is_near_zero():
    cs = concepts()
    r = mig(rotated(one_dim_each(cs)), cs)
    assert r["mig"] < 0.2, r


def test_mig_matches_a_direct_computation():
    """MI of one (dimension, concept) pair against sklearn's mutual_info_score on the same bins."""
    from sklearn.metrics import mutual_info_score

    cs = concepts(3, n=500)
    z = one_dim_each(cs, noise=0.5)
    r = mig(z, cs[2:])
    labels = np.asarray(cs[2].values)
    binned = [np.digitize(z[:, i], np.histogram(z[:, i], 20)[1][:-1]) for i in range(D)]
    mi = np.array([mutual_info_score(labels, b) for b in binned]) / mutual_info_score(labels, labels)
    top = np.sort(mi)[::-1]
    assert r["mig"] == pytest.approx(top[0] - top[1], abs=1e-9)


def test_dci_lasso_factored_and_rotated():
    cs = concepts(classes=2)  # a linear importance model reads two classes off one dimension, not ten
    good = dci(one_dim_each(cs), cs)
    bad = dci(rotated(one_dim_each(cs)), cs)
    assert good["importance_model"].startswith("lasso")
    assert good["disentanglement"] > 0.9 and good["completeness"] > 0.9, good
    assert bad["disentanglement"] < 0.3 and bad["completeness"] < 0.5, bad
    assert len(good["per_dimension"]["disentanglement"]) == D
    assert np.asarray(good["importance"]).shape == (D, 3)
    # Informativeness is held out and does not depend on the rotation of a linear code.
    for name in ("thickness", "slant", "digit"):
        assert good["per_concept"][name]["informativeness"] > 0.95
        assert bad["per_concept"][name]["informativeness"] > 0.95
    assert json.loads(json.dumps(good)) == good


def test_dci_gbt_small():
    cs = [c for c in concepts(4, n=400) if c.kind == "continuous"] + \
         [Concept("parity", np.random.default_rng(5).integers(0, 2, 400), "class")]
    z = one_dim_each(cs)[:, :5]
    r = dci(z, cs, importance="gbt")
    assert r["importance_model"].startswith("gbt")
    assert r["disentanglement"] > 0.7, r
    assert r["per_concept"]["parity"]["informativeness"] > 0.9


def test_deterministic_and_bad_input():
    cs = concepts(6)
    z = one_dim_each(cs)
    assert mig(z, cs) == mig(z, cs)
    assert dci(z, cs) == dci(z, cs)
    with pytest.raises(ValueError, match="samples"):
        mig(z[:-1], cs)
    with pytest.raises(ValueError, match="samples"):
        dci(z[:-1], cs)
    with pytest.raises(ValueError, match="importance"):
        dci(z, cs, importance="forest")
    with pytest.raises(ValueError, match="bins"):
        mig(z, cs, bins=1)
    with pytest.raises(ValueError, match="NaN"):
        mig(np.full_like(z, np.nan), cs)
