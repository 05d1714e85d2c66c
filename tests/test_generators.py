"""The thickness and slant generators: accuracy of the measured factor, determinism, labels, Params."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from acc.generators.slant import SlantGenerator
from acc.generators.thickness import ThicknessGenerator

N = 300


@pytest.fixture(scope="module")
def thickness(mnist_cache):
    return ThicknessGenerator(mnist_cache)


@pytest.fixture(scope="module")
def slant(mnist_cache):
    return SlantGenerator(mnist_cache)


def generate(gen, seed=0, n=N, **params):
    return gen.generate(n, np.random.default_rng(seed), gen.Params(**params))


def check_output(gen, factor, images, targets, labels, n=N):
    assert images.dtype == np.uint8 and images.shape == (n, 28, 28)
    assert (images.max((1, 2)) >= 128).all(), "every image has a stroke"
    assert set(targets) == {factor, f"{factor}_target"}
    for values in targets.values():
        assert values.dtype == np.float32 and values.shape == (n,) and np.isfinite(values).all()
    # Labels are the source digits' classes (the generators draw their sources first).
    _, mnist_labels = gen.mnist()
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, mnist_labels[np.random.default_rng(0).integers(len(mnist_labels), size=n)])
    assert set(np.unique(labels)) <= set(range(10)) and len(np.unique(labels)) == 10


def test_thickness_reaches_targets(thickness):
    images, targets, labels = generate(thickness, low=1.5, high=5.0)
    check_output(thickness, "thickness", images, targets, labels)
    target = targets["thickness_target"]
    assert target.min() >= 1.5 and target.max() <= 5.0 and target.std() > 0.9
    assert np.abs(targets["thickness"] - target).mean() < 0.3


def test_thick_strokes_never_erase_the_digit(thickness):
    # At 6-8 px loops fill in and the first drawing reads far too thick; the capped correction
    # must not answer that by thinning the stroke away.
    images, _, _ = generate(thickness, n=200, low=6.0, high=8.0)
    assert (images >= 128).sum((1, 2)).min() >= 100


def test_slant_reaches_targets(slant):
    images, targets, labels = generate(slant, low=-0.6, high=0.6)
    check_output(slant, "slant", images, targets, labels)
    target = targets["slant_target"]
    assert target.min() >= -0.6 and target.max() <= 0.6 and target.std() > 0.3
    assert np.abs(targets["slant"] - target).mean() < 0.02


def test_slant_keeps_the_source_digit(slant):
    # A shear moves ink along rows: each row keeps its ink unless some leaves the frame.
    images, _, _ = generate(slant, n=50)
    digits, _ = slant.mnist()
    source = digits[np.random.default_rng(0).integers(len(digits), size=50)]
    rows, source_rows = images.sum(2, dtype=float), source.sum(2, dtype=float)
    kept = np.abs(rows - source_rows).sum(1) < 0.02 * source_rows.sum(1)
    assert kept.mean() > 0.8


@pytest.mark.parametrize("make", ["thickness", "slant"])
def test_same_seed_same_data_other_seed_other_data(make, request):
    gen = request.getfixturevalue(make)
    first, again, other = (generate(gen, seed, n=40) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[2], again[2])
    for key in first[1]:
        np.testing.assert_array_equal(first[1][key], again[1][key])
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1][f"{make}_target"], other[1][f"{make}_target"])


@pytest.mark.parametrize("make", ["thickness", "slant"])
def test_empty_request(make, request):
    images, targets, labels = generate(request.getfixturevalue(make), n=0)
    assert images.shape == (0, 28, 28) and labels.shape == (0,)
    assert all(v.shape == (0,) for v in targets.values())


@pytest.mark.parametrize("cls, bad, match", [
    (ThicknessGenerator, {"low": 4.0, "high": 2.0}, "must not be greater than high"),
    (ThicknessGenerator, {"low": 0.1}, "greater than or equal"),
    (ThicknessGenerator, {"high": 9.0}, "less than or equal"),
    (ThicknessGenerator, {"split": "validation"}, "'train' or 'test'"),
    (ThicknessGenerator, {"thickness": 3.0}, "Extra inputs"),
    (SlantGenerator, {"low": 0.5, "high": -0.5}, "must not be greater than high"),
    (SlantGenerator, {"low": -1.5}, "greater than or equal"),
    (SlantGenerator, {"high": 1.2}, "less than or equal"),
    (SlantGenerator, {"angle": 0.1}, "Extra inputs"),
])
def test_params_validation(cls, bad, match):
    with pytest.raises(ValidationError, match=match):
        cls.Params(**bad)


def test_params_defaults_and_schema():
    assert (ThicknessGenerator.Params().low, ThicknessGenerator.Params().high) == (1.5, 5.5)
    assert (SlantGenerator.Params().low, SlantGenerator.Params().high) == (-0.6, 0.6)
    assert ThicknessGenerator.Params(low=3.0, high=3.0).low == 3.0  # a single value is allowed
    for cls in (ThicknessGenerator, SlantGenerator):
        assert {"low", "high", "split"} <= set(cls.params_schema()["schema"]["properties"])


def test_morpho_mnist_keeps_the_digits_and_measures_them(mnist_cache):
    from acc.generators.morpho import MorphoMnist
    from acc.measure import measure_slant, measure_thickness

    gen = MorphoMnist(mnist_cache)
    images, targets, labels = generate(gen, seed=4, n=50)
    digits, mnist_labels = gen.mnist()
    pick = np.random.default_rng(4).integers(len(digits), size=50)
    np.testing.assert_array_equal(images, digits[pick])  # unchanged
    np.testing.assert_array_equal(labels, mnist_labels[pick])
    np.testing.assert_array_equal(targets["thickness"], measure_thickness(digits[pick]))
    np.testing.assert_array_equal(targets["slant"], measure_slant(digits[pick]))
    assert 1.0 < targets["thickness"].mean() < 5.0 and targets["slant"].std() > 0.05  # real variation
    assert set(targets) == {"thickness", "slant", "area", "length"}
    assert 40 < targets["area"].mean() < 200 and 10 < targets["length"].mean() < 60  # MNIST-sized strokes
