"""Morpho-MNIST measurements: shapes of known stroke width and slant, and the batched tricks
checked pixel for pixel against the per-image scikit-image / scipy definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import skeletonize

from acc import measure
from acc.mnist import load_mnist

SUPERSAMPLE = 8


def render(inside) -> np.ndarray:
    """A 28x28 uint8 image of the region `inside(x, y)` (pixel units, y down), supersampled so
    that edge pixels get their covered fraction of ink, as a scanner would give."""
    y, x = (np.mgrid[0:28 * SUPERSAMPLE, 0:28 * SUPERSAMPLE] + 0.5) / SUPERSAMPLE
    ink = inside(x, y).reshape(28, SUPERSAMPLE, 28, SUPERSAMPLE).mean((1, 3))
    return (ink * 255).round().astype(np.uint8)


def bar(width: float, angle_deg: float, length: float = 20.0) -> np.ndarray:
    """A straight stroke `width` pixels wide through the centre, `angle_deg` from horizontal."""
    a = np.deg2rad(angle_deg)
    def inside(x, y):
        along = (x - 14) * np.cos(a) + (y - 14) * np.sin(a)
        across = -(x - 14) * np.sin(a) + (y - 14) * np.cos(a)
        return (np.abs(across) <= width / 2) & (np.abs(along) <= length / 2)
    return render(inside)


def ellipse(k: float) -> np.ndarray:
    """An upright ellipse sheared so that its top leans right by k per pixel of height: slant arctan(k)."""
    return render(lambda x, y: (((x - 14) + k * (y - 14)) / 3.5) ** 2 + ((y - 14) / 8) ** 2 <= 1)


@pytest.fixture(scope="module")
def digits(mnist_cache) -> np.ndarray:
    return load_mnist(mnist_cache).images[:200, 0].numpy()


# --- thickness ---

def test_axis_aligned_bars_measure_their_width():
    # Exact when the bar covers an even number of x4 pixels; when odd, the distance transform
    # counts to the centre of the first background pixel, half a x4 pixel further on each side:
    # a quarter of a pixel in all.
    widths = np.array([1.0, 1.5, 2.0, 2.25, 3.0, 3.75, 5.0])
    for angle in (0, 90):
        measured = measure.measure_thickness(np.stack([bar(w, angle) for w in widths]))
        assert np.all(np.abs(measured - widths) <= 0.26), (angle, measured)


def test_diagonal_bars_measure_their_width():
    # On a diagonal the skeleton is a staircase and the edge falls between x4 pixels: up to a
    # further eighth of a pixel, so 0.35 all told.
    widths = np.array([1.0, 1.5, 2.0, 2.5, 3.0])
    measured = measure.measure_thickness(np.stack([bar(w, 45) for w in widths]))
    assert np.all(np.abs(measured - widths) <= 0.35), measured
    assert np.all(np.diff(measured) > 0.3)


def reference_thickness(image: np.ndarray) -> float:
    """Morpho-MNIST's thickness of one image the plain way (torch's bicubic, background beyond the frame)."""
    hires = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None].float() / 255, scale_factor=4,
                                            mode="bicubic")[0, 0].numpy()
    binary = hires >= 0.5
    skeleton = skeletonize(binary)
    if not skeleton.any():
        return 0.0
    return 2 * ndimage.distance_transform_edt(np.pad(binary, 1))[1:-1, 1:-1][skeleton].mean() / 4


def test_batched_thickness_equals_per_image_definition(digits):
    rng = np.random.default_rng(0)
    blobs = (ndimage.gaussian_filter(rng.random((20, 28, 28)), 2) > 0.5) * np.uint8(255)  # ink up to the frame's edge
    images = np.concatenate([digits, blobs, bar(3.0, 30)[None]])
    expected = np.array([reference_thickness(im) for im in images])
    np.testing.assert_allclose(measure.measure_thickness(images), expected, rtol=1e-5, atol=1e-5)


LENGTH_MASK = np.array([[0, 0, 0], [0, 0, 1], [np.sqrt(2), 1, np.sqrt(2)]])  # Morpho-MNIST's skeleton links


def reference_area_and_length(image: np.ndarray) -> tuple[float, float]:
    """Morpho-MNIST's area and length of one image the plain way: ink pixels, and the skeleton's
    links summed with scipy's correlate, both back in 28x28 pixels."""
    hires = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None].float() / 255, scale_factor=4,
                                            mode="bicubic")[0, 0].numpy()
    binary = hires >= 0.5
    skeleton = skeletonize(binary)
    links = ndimage.correlate(skeleton.astype(float), LENGTH_MASK, mode="constant")
    return binary.sum() / 16, links[skeleton].sum() / 4


def test_batched_area_and_length_equal_per_image_definition(digits):
    images = np.concatenate([digits[:100], np.zeros((1, 28, 28), np.uint8), bar(3.0, 30)[None]])
    measured = measure.measure_morphometry(images)
    expected = np.array([reference_area_and_length(im) for im in images])
    np.testing.assert_allclose(measured["area"], expected[:, 0], rtol=1e-6)
    np.testing.assert_allclose(measured["length"], expected[:, 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(measured["thickness"], measure.measure_thickness(images))
    np.testing.assert_array_equal(measured["slant"], measure.measure_slant(images))
    assert measured["area"][100] == measured["length"][100] == 0  # no ink


def test_a_bar_has_the_area_and_about_the_length_it_was_drawn_with():
    measured = measure.measure_morphometry(np.stack([bar(2.0, 0, length=l) for l in (10.0, 16.0, 20.0)]))
    np.testing.assert_allclose(measured["area"], [20.0, 32.0, 40.0], rtol=0.03)
    # Thinning stops half a stroke width from each end: about the length less the width.
    np.testing.assert_allclose(measured["length"], [8.0, 14.0, 18.0], atol=0.6)


def test_skeletonise_equals_skimage_per_image(digits):
    binary = measure.binarise(measure.upscale(measure.as_float(digits[:50])))
    binary[3, :, :5] = True  # ink along the frame's edge
    skeleton = measure.skeletonise(binary)
    for b, s in zip(binary, skeleton):
        np.testing.assert_array_equal(s, skeletonize(b))


@pytest.mark.parametrize("scale", [2, 4])
def test_skeleton_distance_equals_brute_force(digits, scale):
    images = digits[:10]
    reach = 3.0
    distance = measure.skeleton_distance(images, reach, scale)
    skeleton = measure.skeletonise(measure.binarise(measure.upscale(measure.as_float(images), scale)))
    centres = (np.stack(np.mgrid[0:28, 0:28], -1).reshape(-1, 1, 2) + 0.5) * scale  # in hi-res pixel units
    for d, s in zip(distance, skeleton):
        points = np.argwhere(s) + 0.5
        expected = np.sqrt(((centres - points) ** 2).sum(-1)).min(1).reshape(28, 28) / scale
        near = expected < reach
        np.testing.assert_allclose(d[near], expected[near], atol=1e-5)
        assert (d[~near] >= reach - 1e-5).all()


def test_empty_image_has_zero_thickness_and_slant():
    images = np.zeros((3, 28, 28), np.uint8)
    images[1] = bar(2.0, 0)
    thickness = measure.measure_thickness(images)
    assert thickness[0] == 0 and thickness[2] == 0
    assert thickness[1] == measure.measure_thickness(images[1:2])[0]  # neighbours do not interfere
    np.testing.assert_array_equal(measure.measure_slant(np.zeros((2, 28, 28), np.uint8)), [0, 0])


def test_accepts_channel_dimension_and_tensors():
    images = np.stack([bar(2.0, 0), ellipse(0.5)])
    expected_t, expected_s = measure.measure_thickness(images), measure.measure_slant(images)
    for given in (images[:, None], torch.from_numpy(images), torch.from_numpy(images)[:, None]):
        t, s = measure.measure_thickness(given), measure.measure_slant(given)
        assert t.dtype == s.dtype == np.float32 and t.shape == s.shape == (2,)
        np.testing.assert_array_equal(t, expected_t)
        np.testing.assert_array_equal(s, expected_s)
    with pytest.raises(ValueError, match="expected images"):
        measure.measure_thickness(np.zeros((28, 28), np.uint8))


# --- slant ---

def test_sheared_ellipse_slant_is_arctan_of_shear():
    ks = np.array([-0.8, -0.4, 0.3, 0.7])
    measured = measure.measure_slant(np.stack([ellipse(k) for k in ks]))
    np.testing.assert_allclose(measured, np.arctan(ks), atol=0.01)  # pixels round the outline


def test_slant_sign_and_symmetry():
    # y points down, so -60 degrees runs up to the right.
    upright, leaning_right, leaning_left = bar(2.0, 90), bar(2.0, -60), bar(2.0, 60)
    slant = measure.measure_slant(np.stack([upright, leaning_right, leaning_left, ellipse(0.0)]))
    assert abs(slant[0]) < 1e-9 and abs(slant[3]) < 1e-9
    assert slant[1] > 0.4 and slant[2] < -0.4
    np.testing.assert_allclose(slant[1], -slant[2], atol=1e-6)
    np.testing.assert_allclose(slant[1], np.arctan(1 / np.tan(np.deg2rad(60))), atol=0.02)


def test_shear_adds_k_to_tan_slant(digits):
    images = measure.as_float(digits[:100])
    k = np.random.default_rng(1).uniform(-0.5, 0.5, len(images))
    sheared = measure.shear(images, k)
    change = np.tan(measure.slant(sheared)) - np.tan(measure.slant(images))
    # Exact while no ink leaves the frame: linear interpolation keeps each row's mass and centre.
    inside = np.isclose(sheared.sum((1, 2)), images.sum((1, 2)), rtol=1e-6)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(change[inside], k[inside], atol=1e-5)


def test_set_slant_and_set_thickness_reach_targets(digits):
    target = np.linspace(-0.6, 0.6, 50)
    assert np.abs(measure.measure_slant(measure.set_slant(digits[:50], target)) - target).mean() < 0.02
    target = np.linspace(1.5, 5.0, 50)
    assert np.abs(measure.measure_thickness(measure.set_thickness(digits[:50], target)) - target).mean() < 0.3
