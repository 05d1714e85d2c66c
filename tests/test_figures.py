"""The factoring evaluation's figures (acc.eval.figures): traversal latents and decoding on tiny
models, cleanliness on hand-made traversals with a known answer, attention statistics on known
maps, and the renderers' shapes, labels and determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from acc import measure
from acc.eval import figures
from acc.eval.figures import (
    STEPS, attention_overlay, attention_stats, decode_images, png_bytes, principal_direction, probe_direction,
    sort_by_activation, traversal_cleanliness, traversal_grid, traversal_latents,
)
from acc.images import GAP, GAP_VALUE, upscale_nearest
from acc.mnist import load_mnist
from acc.models import build_model

FACTOR_SLOT = {"name": "factor_slot", "factors": ["digit", "thickness", "slant", "style"], "slot_dim": 4,
               "channels": 16, "hidden": 16}
CONV_AE = {"name": "conv_ae", "latent_dim": 8, "channels": 8}
S = 3  # digit cells are drawn at 3x


@pytest.fixture(scope="module")
def mnist(mnist_cache):
    data = load_mnist(mnist_cache)
    every = np.arange(0, len(data), len(data) // 300)[:300]  # all classes (the file may be sorted by class)
    return data.images[every, 0].numpy(), data.labels[every].numpy()


@pytest.fixture(scope="module")
def seeds(mnist) -> tuple[np.ndarray, np.ndarray]:
    """Five digits of five different classes (uint8 [5,28,28], classes [5])."""
    images, labels = mnist
    pick = [int(np.flatnonzero(labels == c)[0]) for c in (0, 2, 3, 6, 8)]
    return images[pick], labels[pick]


def model(config: dict):
    torch.manual_seed(0)
    return build_model(config)


def text_pixels(region: np.ndarray, background=GAP_VALUE) -> int:
    """Pixels of a band that are not background (greyscale or RGB)."""
    differs = region != background
    return int(differs.any(-1).sum() if region.ndim == 3 else differs.sum())


# --- principal direction and traversal latents ---

def test_principal_direction_finds_the_spread_axis_with_a_fixed_sign():
    rng = np.random.default_rng(0)
    axis = np.array([1.0, -2.0, 0.5, 0.0])
    axis /= np.linalg.norm(axis)
    codes = 3.0 + rng.normal(0, 2.0, (4000, 1)) * axis + rng.normal(0, 0.05, (4000, 4))
    mean, direction, sd = principal_direction(codes)
    assert mean.shape == (4,) and direction.shape == (4,) and isinstance(sd, float)
    assert np.allclose(mean, 3.0, atol=0.1)
    assert np.isclose(np.linalg.norm(direction), 1.0)
    assert np.allclose(direction, -axis, atol=0.01)  # the largest component (-2) made positive
    assert abs(sd - 2.0) < 0.1
    _, flipped, _ = principal_direction(6.0 - codes)  # the codes mirrored: the same direction
    assert np.allclose(flipped, direction)
    still_mean, still, zero = principal_direction(np.ones((10, 3)))
    assert zero == 0.0 and np.allclose(still, [1, 0, 0]) and np.allclose(still_mean, 1)
    with pytest.raises(ValueError):
        principal_direction(np.ones((1, 3)))


def test_probe_direction_follows_the_concept_not_the_spread():
    rng = np.random.default_rng(1)
    concept = rng.uniform(1.5, 5.5, 4000)  # e.g. thickness
    codes = np.column_stack([rng.normal(0, 5.0, 4000),  # where the codes vary most: not the concept
                             0.3 * concept + rng.normal(0, 0.05, 4000),
                             -0.3 * concept + rng.normal(0, 0.05, 4000)])
    _, spread_axis, _ = principal_direction(codes)
    assert abs(spread_axis[0]) > 0.99
    direction = probe_direction(codes, concept)
    assert np.isclose(np.linalg.norm(direction), 1.0)
    assert np.allclose(direction, [0, 1 / np.sqrt(2), -1 / np.sqrt(2)], atol=0.02)  # towards more of it
    assert np.allclose(probe_direction(codes, -concept), -direction)
    nothing = probe_direction(np.zeros((10, 3)), np.arange(10.0))
    assert np.allclose(nothing, [1, 0, 0])
    with pytest.raises(ValueError):
        probe_direction(codes, concept[:10])


def test_traversal_latents_change_only_the_group():
    rng = np.random.default_rng(1)
    seed_latents = rng.normal(size=(5, 16)).astype(np.float32)
    group = slice(4, 8)
    mean, direction = rng.normal(size=4), np.array([0.5, 0.5, 0.5, 0.5])
    out = traversal_latents(seed_latents, group, mean, direction, sd=2.0)
    assert out.shape == (5, 9, 16) and out.dtype == np.float32
    other = np.r_[0:4, 8:16]
    assert np.array_equal(out[:, :, other], np.repeat(seed_latents[:, None, other], 9, axis=1))
    expected = mean + STEPS[:, None] * 2.0 * direction  # [9, 4], the same for every seed
    assert np.allclose(out[:, :, group], expected[None], atol=1e-6)
    assert np.allclose(out[:, 4, group], mean, atol=1e-6)  # the middle step is the mean
    assert traversal_latents(seed_latents, group, mean, direction, 1.0, steps=[0.0, 1.0]).shape == (5, 2, 16)
    with pytest.raises(ValueError):
        traversal_latents(seed_latents, slice(0, 3), mean, direction, 1.0)


@pytest.mark.parametrize("config", [FACTOR_SLOT, CONV_AE], ids=["factor_slot", "conv_ae"])
def test_decode_images_on_tiny_models(config, seeds):
    net = model(config)
    x = torch.from_numpy(seeds[0]).float()[:, None] / 255
    with torch.no_grad():
        out = net.eval()(x)
    assert ("attention" in out) == (config["name"] == "factor_slot")  # the conv AE has none: no overlay
    latent = out["latent"].numpy()
    recon = torch.sigmoid(out["recon"])[:, 0].numpy()

    net.train()
    decoded = decode_images(net, latent)
    assert net.training  # the mode is restored
    assert decoded.shape == (5, 28, 28) and decoded.dtype == np.float32
    assert np.allclose(decoded, recon, atol=1e-5)  # decode(latent) is forward's reconstruction

    group = net.latent_slices["thickness" if "thickness" in net.latent_slices else "all"]
    mean, direction, sd = principal_direction(latent[:, group])
    images = decode_images(net.eval(), traversal_latents(latent, group, mean, direction, sd), batch=7)
    assert not net.training
    assert images.shape == (5, 9, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert np.allclose(images, decode_images(net, traversal_latents(latent, group, mean, direction, sd)), atol=1e-6)


def test_decode_images_needs_decode():
    class NoDecode(torch.nn.Module):
        recon_logits = False
    with pytest.raises(TypeError, match="decode"):
        decode_images(NoDecode(), np.zeros((2, 4), np.float32))


# --- traversal grid ---

def test_traversal_grid_layout_labels_and_determinism(seeds):
    images = np.repeat(seeds[0][:, None], 9, axis=1).astype(np.float32) / 255  # [5, 9, 28, 28]
    grid = traversal_grid(images, STEPS, "thickness slot: principal direction")
    assert grid.dtype == np.uint8 and grid.ndim == 2
    h, w = grid.shape
    cell = 28 * S + GAP
    assert w >= 9 * cell and h >= 5 * cell
    # the last seed's last step sits in the bottom-right corner, 3x without blurring
    corner = grid[h - GAP - 28 * S:h - GAP, w - GAP - 28 * S:w - GAP]
    assert np.array_equal(corner, upscale_nearest(seeds[0][-1], S))
    top = h - GAP - 5 * cell  # above the digits: the title, then the column labels
    assert text_pixels(grid[:top // 2]) > 100 and text_pixels(grid[top // 2:top]) > 100
    assert text_pixels(grid[top:, :w - 9 * cell - GAP]) > 100  # the row labels
    assert png_bytes(grid) == png_bytes(traversal_grid(images, STEPS, "thickness slot: principal direction"))
    assert not np.array_equal(grid, traversal_grid(images, STEPS, "slant slot: principal direction"))
    assert [figures.step_label(t) for t in STEPS[[0, 1, 4, 8]]] == ["-2 sd", "-1.5 sd", "0 sd", "+2 sd"]
    with pytest.raises(ValueError):
        traversal_grid(images, STEPS[:5], "x")


def test_traversal_grid_leading_columns_show_where_each_row_started(seeds):
    images = np.zeros((5, 9, 28, 28), np.float32)  # black steps: only the leading columns have digits
    plain = traversal_grid(images, STEPS, "t")
    grid = traversal_grid(images, STEPS, "t", leading={"input": seeds[0], "recon": seeds[0][::-1]})
    assert grid.shape[0] == plain.shape[0] and grid.shape[1] > plain.shape[1] + 2 * 28 * S
    h, w = grid.shape
    cell = 28 * S + GAP
    # the steps still end in the bottom-right corner; the inputs and reconstructions sit left of them
    assert np.array_equal(grid[h - GAP - 28 * S:h - GAP, w - GAP - 28 * S:w - GAP], np.zeros((28 * S, 28 * S)))
    first_step = w - 9 * cell
    leading = grid[h - GAP - 5 * cell:, :first_step]
    assert text_pixels(grid[:h - GAP - 5 * cell, first_step - 2 * cell:first_step]) > 50  # "input", "recon" labels
    for i, seed in enumerate(seeds[0]):
        row = leading[i * cell:(i + 1) * cell]
        assert any(np.array_equal(row[GAP:GAP + 28 * S, x:x + 28 * S], upscale_nearest(seed, S))
                   for x in range(row.shape[1] - 28 * S))
    with pytest.raises(ValueError, match="leading column 'input'"):
        traversal_grid(images, STEPS, "t", leading={"input": seeds[0][:3]})


# --- cleanliness on hand-made traversals ---

def thickened(seeds: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each seed redrawn at each target thickness: float [S, T, 28, 28]."""
    t = len(targets)
    drawn = measure.set_thickness(np.repeat(seeds, t, axis=0), np.tile(targets, len(seeds)))
    return measure.as_float(drawn).reshape(len(seeds), t, 28, 28)


def keep_classes(seed_classes, steps, changed_from: int):
    """A classifier that calls every image its seed's class up to step `changed_from`, another after."""
    def classify(images):
        assert images.shape == (len(seed_classes) * steps, 28, 28) and images.dtype == np.float32
        classes = np.repeat(seed_classes, steps).reshape(-1, steps).copy()
        classes[:, changed_from:] = (classes[:, changed_from:] + 1) % 10
        return classes.ravel()
    return classify


def test_cleanliness_of_a_thickening_traversal(seeds):
    images, classes = seeds
    traversal = thickened(images, np.linspace(1.5, 5.5, 9))
    result = traversal_cleanliness(traversal, "thickness", classes, keep_classes(classes, 9, 6))
    assert result["rho"] > 0.9 and result["rho_seed_mean"] > 0.95 and len(result["rho_per_seed"]) == 5
    assert result["range"] > 2.5 and result["unit"] == "px"
    assert result["class_kept"] == pytest.approx(6 / 9)
    assert result["class_kept_per_step"] == [1.0] * 6 + [0.0] * 3
    assert np.array(result["measured"]).shape == (5, 9)
    json.dumps(result, allow_nan=False)  # plain floats


def test_cleanliness_of_unordered_traversals(seeds):
    images, classes = seeds
    targets = np.array([1.5, 2.5, 3.5, 4.5, 5.5, 4.5, 3.5, 2.5, 1.5])  # thin, thick, thin: no trend
    tent = traversal_cleanliness(thickened(images, targets), "thickness", classes, lambda x: np.zeros(len(x), int))
    assert abs(tent["rho"]) < 1e-6 and max(map(abs, tent["rho_per_seed"])) < 1e-6
    assert tent["range"] > 2.5 and tent["class_kept"] == pytest.approx(1 / 5)  # only the 0 is called 0

    ramp = thickened(images, np.linspace(1.5, 5.5, 9))
    order = np.random.default_rng(0).permutation(9)
    shuffled = traversal_cleanliness(ramp[:, order], "thickness", classes, keep_classes(classes, 9, 9))
    assert abs(shuffled["rho"]) < 0.35 and shuffled["class_kept"] == 1.0

    still = np.repeat(measure.as_float(images)[:, None], 9, axis=1)  # nothing changes
    flat = traversal_cleanliness(still, "slant", classes, keep_classes(classes, 9, 9))
    assert flat["rho"] == 0.0 and flat["rho_per_seed"] == [0.0] * 5 and flat["range"] == 0.0
    json.dumps(flat, allow_nan=False)


def test_cleanliness_standard_errors_over_the_seed_images(seeds):
    """Rows that agree have no spread; rows that disagree do; one seed has no standard error."""
    images, classes = seeds
    ramp = thickened(images, np.linspace(1.5, 5.5, 9))
    agree = traversal_cleanliness(ramp, "thickness", classes, keep_classes(classes, 9, 9))
    assert agree["class_kept_se"] == 0.0 and agree["rho_se"] < 0.03
    mixed = ramp.copy()
    mixed[2:] = ramp[2:, ::-1]  # two seeds thicken, three thin
    mixed_classes = traversal_cleanliness(mixed, "thickness", classes, keep_classes(classes, 9, 4))
    assert mixed_classes["rho_se"] > 0.2 > agree["rho_se"]
    assert mixed_classes["range_se"] >= 0 and mixed_classes["class_kept_se"] == pytest.approx(0.0)  # each row kept 4 of 9
    one = traversal_cleanliness(ramp[:1], "thickness", classes[:1], keep_classes(classes[:1], 9, 9))
    assert one["rho_se"] is None and one["range_se"] is None and one["class_kept_se"] is None


def test_cleanliness_of_a_slant_traversal(seeds):
    images, classes = seeds
    targets = np.linspace(-0.5, 0.5, 9)
    sheared = measure.set_slant(np.repeat(images, 9, axis=0), np.tile(targets, 5))
    traversal = measure.as_float(sheared).reshape(5, 9, 28, 28)
    result = traversal_cleanliness(traversal, "slant", classes, keep_classes(classes, 9, 9))
    assert result["rho"] > 0.95 and result["rho_seed_mean"] > 0.99 and result["unit"] == "rad"
    assert result["range"] == pytest.approx(1.0, abs=0.1)
    backwards = traversal_cleanliness(traversal[:, ::-1], "slant", classes, keep_classes(classes, 9, 9))
    assert backwards["rho"] == pytest.approx(-result["rho"])
    with pytest.raises(ValueError, match="concept"):
        traversal_cleanliness(traversal, "area", classes, keep_classes(classes, 9, 9))


# --- sorted along a projection ---

def test_sort_by_activation(mnist):
    images, labels = mnist
    thickness = measure.measure_thickness(images)
    captions = [f"t {t:.1f} c {c}" for t, c in zip(thickness, labels)]
    figure = sort_by_activation(images, thickness, captions, k=20)
    assert figure.dtype == np.uint8 and figure.ndim == 2
    again = sort_by_activation(images, thickness, captions, k=20)
    assert png_bytes(figure) == png_bytes(again)

    # Layout: a block label, then rows of 10 captioned cells; the thinnest digit comes first.
    h, w = figure.shape
    cell_w = (w - GAP) // 10
    header = figures.LABEL_PX + 2 * figures.PAD
    left = GAP + (cell_w - GAP - 28 * S) // 2
    first = figure[header:header + 28 * S, left:left + 28 * S]
    assert np.array_equal(first, upscale_nearest(images[np.argmin(thickness)], S))
    assert text_pixels(figure[:header]) > 50  # "lowest 20"
    caption = figure[header + 28 * S:header + 28 * S + figures.caption_fonts()[0].size + 2 * figures.PAD, :cell_w]
    assert text_pixels(caption) > 30
    assert h > 4 * 28 * S  # two blocks of two rows

    titled = sort_by_activation(images, thickness, captions, k=20, title="thickness slot")
    assert titled.shape[0] > h and text_pixels(titled[:figures.TITLE_PX]) > 30
    wide = sort_by_activation(images, thickness, ["a much longer caption " + c for c in captions], k=20)
    assert wide.shape[1] > w  # cells widen rather than shrink the captions below 11 px
    few = sort_by_activation(images[:5], thickness[:5], captions[:5], k=20)  # 3 lowest, 2 highest
    assert few.dtype == np.uint8


# --- attention ---

def test_attention_overlay(seeds):
    net = model(FACTOR_SLOT)
    x = torch.from_numpy(seeds[0]).float()[:, None] / 255
    with torch.no_grad():
        attention = net.eval()(x)["attention"]
    sharp = torch.zeros(5, 7, 7)
    sharp[:, 3, 3] = 1.0
    maps = {**attention, "sharp": sharp}
    figure = attention_overlay(x[:, 0].numpy(), maps)
    assert figure.dtype == np.uint8 and figure.ndim == 3 and figure.shape[2] == 3
    h, w, _ = figure.shape
    cell = 28 * S + GAP
    rows = 1 + len(maps)  # the input digits, then one row per factor
    assert h - GAP - rows * cell > 0 and w > 5 * cell
    assert png_bytes(figure) == png_bytes(attention_overlay(x[:, 0].numpy(), maps))

    title_band = h - GAP - rows * cell
    labels = w - GAP - 5 * cell
    assert text_pixels(figure[:title_band], GAP_VALUE) > 100  # the caption says how maps are drawn
    for r in range(rows):  # every row has its name on the left
        band = figure[title_band + GAP + r * cell:title_band + GAP + r * cell + 28 * S, :labels]
        assert text_pixels(band, GAP_VALUE) > 30
    input_cell = figure[title_band + GAP:title_band + GAP + 28 * S, labels + GAP:labels + GAP + 28 * S]
    assert np.array_equal(input_cell[..., 0], upscale_nearest(seeds[0][0], S))  # plain digit, grey
    assert np.array_equal(input_cell[..., 0], input_cell[..., 2])
    top = title_band + GAP + (rows - 1) * cell  # the sharp map: heat in the middle, plain digit at the edges
    sharp_cell = figure[top:top + 28 * S, labels + GAP:labels + GAP + 28 * S].astype(int)
    middle = sharp_cell[39:45, 39:45]  # pixels 13-14 of 28: the peak
    assert (middle[..., 0] - middle[..., 2]).min() > 80
    assert np.array_equal(sharp_cell[:12, :12, 0], sharp_cell[:12, :12, 2])


def test_attention_stats_on_known_maps():
    n = 6
    uniform = np.full((n, 7, 7), 1 / 49)
    stats = attention_stats({"a": uniform, "b": uniform.copy()})
    assert stats["max_entropy"] == pytest.approx(np.log(49))
    assert stats["entropy"]["a"] == pytest.approx(np.log(49)) and stats["entropy"]["b"] == pytest.approx(np.log(49))
    assert stats["overlap"] == pytest.approx(1.0)  # identical maps
    left, right = np.zeros((n, 7, 7)), np.zeros((n, 7, 7))
    left[:, :, :3], right[:, :, 4:] = 1 / 21, 1 / 21
    spot = np.zeros((n, 7, 7))
    spot[:, 3, 3] = 1.0
    stats = attention_stats({"left": torch.from_numpy(left), "right": right, "spot": spot})
    assert stats["entropy"]["left"] == pytest.approx(np.log(21)) and stats["entropy"]["spot"] == pytest.approx(0.0)
    assert stats["overlap_pairs"] == {"left/right": 0.0, "left/spot": 0.0, "right/spot": 0.0}
    assert stats["overlap"] == 0.0  # disjoint
    half = attention_stats({"left": left, "both": (left + right) / 2})
    assert half["overlap"] == pytest.approx(0.5)
    assert attention_stats({"only": spot})["overlap"] is None
    json.dumps(stats, allow_nan=False)


def test_attention_stats_of_the_factor_slot_model(seeds):
    net = model(FACTOR_SLOT)
    with torch.no_grad():
        attention = net.eval()(torch.from_numpy(seeds[0]).float()[:, None] / 255)["attention"]
    stats = attention_stats(attention)
    assert set(stats["entropy"]) == {"digit", "thickness", "slant", "style"}
    assert all(0 <= e <= stats["max_entropy"] + 1e-6 for e in stats["entropy"].values())
    assert 0 <= stats["overlap"] <= 1 and len(stats["overlap_pairs"]) == 6
