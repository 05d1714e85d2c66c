"""The factoring evaluation's figures and the numbers read off them (DESIGN §7): latent traversals
along a slot group's principal direction, how cleanly they change one concept, images sorted along a
projection, and where the Factor-Slot model's slots look.

Everything here is a pure function of numpy arrays (a model only where images are decoded) and
deterministic: the same inputs give the same array, hence the same PNG bytes. Figures are uint8
images, [H, W] greyscale or [H, W, 3] RGB, every one labelled on the image itself: white digits on
mid-grey at 3x (84 px), text in Pillow's scalable font at 11 px or more (acc.images). `png_bytes`
encodes one at the edge.

Numbers come back as plain Python floats (JSON-able); an undefined one is None.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy.stats import rankdata, spearmanr

from acc import measure
from acc.eval.ufr import standard_error
from acc.images import GAP, GAP_VALUE, as_uint8, caption_fonts, fitting_font, font, png_bytes, upscale_nearest
from acc.protocol import recon_probabilities

__all__ = [
    "STEPS", "attention_overlay", "attention_stats", "decode_images", "png_bytes", "principal_direction", "probe_direction",
    "sort_by_activation", "traversal_cleanliness", "traversal_grid", "traversal_latents",
]

STEPS = np.linspace(-2.0, 2.0, 9)  # traversal steps in sd units (DESIGN §7: -2 to +2 sd, 9 steps)
FIG_SCALE = 3  # 28 px digits drawn at 84 px
TITLE_PX = 16  # figure titles
LABEL_PX = 14  # row, column and block labels
MIN_PX = 11  # nothing is drawn smaller
PAD = 4  # px around text
TEXT = 255  # white text on the mid-grey background
CONCEPT_UNITS = {"thickness": "px", "slant": "rad"}


# --- traversals ---

def principal_direction(codes_slot: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean [d], direction [d], sd) of one slot group's held-out codes [N, d].

    `direction` is the first principal component (unit length), its sign fixed so that its
    largest-magnitude component is positive (the first such on a tie); `sd` is the standard
    deviation of the codes' projections on it (ddof 1), i.e. sqrt of the top eigenvalue of their
    covariance. Codes with no variance give sd 0 and the first axis as direction. float64.
    """
    codes = np.asarray(codes_slot, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] < 2 or codes.shape[1] < 1:
        raise ValueError(f"expected codes [N>=2, d>=1], got shape {list(codes.shape)}")
    mean = codes.mean(0)
    centred = codes - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    sd = float(singular[0] / math.sqrt(len(codes) - 1))
    if sd <= 1e-12 * max(1.0, float(np.abs(codes).max())):
        direction = np.zeros(codes.shape[1])
        direction[0] = 1.0
        return mean, direction, 0.0
    direction = vt[0] / np.linalg.norm(vt[0])
    if direction[np.argmax(np.abs(direction))] < 0:
        direction = -direction
    return mean, direction, sd


def probe_direction(codes_slot: np.ndarray, values: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """The unit direction [d] along which a ridge fit of `values` [N] on the slot's codes [N, d]
    grows: where the slot holds the concept, as a probe reads it (the principal direction is where
    the codes vary most, which need not be the same). Codes and values are centred; the ridge
    penalty `alpha` is on the codes' scale. A slot the fit finds nothing in gives the first axis."""
    codes = np.asarray(codes_slot, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).ravel()
    if codes.ndim != 2 or len(codes) != len(values) or len(codes) < 2:
        raise ValueError(f"expected codes [N, d] and values [N], got {list(codes.shape)} and {list(values.shape)}")
    centred, target = codes - codes.mean(0), values - values.mean()
    coef = np.linalg.solve(centred.T @ centred + alpha * np.eye(codes.shape[1]), centred.T @ target)
    norm = np.linalg.norm(coef)
    if not np.isfinite(norm) or norm <= 1e-12:
        direction = np.zeros(codes.shape[1])
        direction[0] = 1.0
        return direction
    return coef / norm


def traversal_latents(seed_latents: np.ndarray, group: slice, mean: np.ndarray, direction: np.ndarray,
                      sd: float, steps: np.ndarray = STEPS) -> np.ndarray:
    """Latents [S, T, D]: for each seed latent (of [S, D]) and step t (of T, in sd units), the
    seed with its `group` dimensions set to mean + t * sd * direction; every other dimension keeps
    the seed's value. The dtype of the seeds (float32 when they are not floating point)."""
    seeds = np.asarray(seed_latents)
    if seeds.ndim != 2:
        raise ValueError(f"expected seed latents [S, D], got shape {list(seeds.shape)}")
    dtype = seeds.dtype if np.issubdtype(seeds.dtype, np.floating) else np.float32
    width = len(range(*group.indices(seeds.shape[1])))
    mean, direction = np.asarray(mean, np.float64).ravel(), np.asarray(direction, np.float64).ravel()
    if width == 0 or mean.shape != (width,) or direction.shape != (width,):
        raise ValueError(f"group {group} has {width} dims; mean and direction have {mean.size} and {direction.size}")
    steps = np.asarray(steps, np.float64).ravel()
    out = np.repeat(seeds.astype(dtype)[:, None, :], len(steps), axis=1)
    out[:, :, group] = (mean + steps[:, None] * float(sd) * direction).astype(dtype)
    return out


@torch.no_grad()
def decode_images(model: torch.nn.Module, latents: np.ndarray | torch.Tensor, batch: int = 256) -> np.ndarray:
    """The model's decoded images of latents [..., D]: float32 [..., 28, 28] in [0, 1], through
    `model.decode` (DESIGN §3) in eval mode, `batch` latents at a time; the model's train/eval mode
    is restored afterwards."""
    if not callable(getattr(model, "decode", None)):
        raise TypeError(f"{type(model).__name__} has no decode(latent): it cannot decode traversals")
    latents = latents.detach().cpu().numpy() if isinstance(latents, torch.Tensor) else np.asarray(latents)
    lead, dim = latents.shape[:-1], latents.shape[-1]
    flat = latents.reshape(-1, dim).astype(np.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        parts = [recon_probabilities(model, model.decode(torch.from_numpy(flat[i:i + batch]).to(device)))
                 .reshape(-1, 28, 28).float().cpu().numpy() for i in range(0, len(flat), batch)]
    finally:
        model.train(was_training)
    images = np.concatenate(parts) if parts else np.zeros((0, 28, 28), np.float32)
    return np.clip(images, 0.0, 1.0).reshape(*lead, 28, 28)


def step_label(t: float) -> str:
    """"-2 sd", "-0.5 sd", "0 sd", "+1.5 sd"."""
    t = round(float(t), 2)
    return "0 sd" if t == 0 else f"{t:+g} sd"


def traversal_grid(images: np.ndarray, steps: Sequence[float], title: str,
                   row_labels: Sequence[str] | None = None,
                   leading: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """A traversal as one greyscale image: uint8 [H, W]. `images` [S, T, 28, 28] (float in [0, 1]
    or uint8): S rows (the seeds, labelled "seed 1".. or by `row_labels`) of T columns (the
    steps, labelled "-2 sd" .. "+2 sd"), under `title` (e.g. "thickness slot: principal direction").
    `leading` ({label: [S, 28, 28]}, e.g. the seed images and their reconstructions) are columns
    drawn left of the steps, set apart by a wider gap, so each row shows what it started from."""
    images = as_uint8(images)
    if images.ndim != 4:
        raise ValueError(f"expected images [S, T, H, W], got shape {list(images.shape)}")
    s, t, h, w = images.shape
    if len(steps) != t:
        raise ValueError(f"{len(steps)} step labels for {t} columns")
    columns = [(label, as_uint8(column)) for label, column in (leading or {}).items()]
    for label, column in columns:
        if column.shape != (s, h, w):
            raise ValueError(f"leading column {label!r} has shape {list(column.shape)}, expected {[s, h, w]}")
    columns += [(step_label(step), images[:, j]) for j, step in enumerate(steps)]
    rows = list(row_labels) if row_labels is not None else [f"seed {i + 1}" for i in range(s)]
    cell_w, cell_h = w * FIG_SCALE + GAP, h * FIG_SCALE + GAP
    apart = 3 * GAP if leading else 0  # between the leading columns and the steps
    label_font = font(LABEL_PX)
    left = _text_width(rows, label_font) + 2 * PAD
    x = [left + GAP + j * cell_w + (apart if j >= len(columns) - t else 0) for j in range(len(columns))]
    content_w = x[-1] + cell_w
    title_font, title_band = _title(title, content_w)
    width = max(content_w, _text_width([title], title_font) + 2 * PAD)
    top = title_band + LABEL_PX + 2 * PAD
    canvas = Image.new("L", (width, top + s * cell_h + GAP), GAP_VALUE)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), title, fill=TEXT, font=title_font)
    for (label, column), cx in zip(columns, x):
        draw.text((cx + w * FIG_SCALE / 2, top - PAD), label, fill=TEXT, font=label_font, anchor="md")
        pixels = upscale_nearest(column, FIG_SCALE)
        for i in range(s):
            canvas.paste(Image.fromarray(pixels[i]), (cx, top + GAP + i * cell_h))
    for i in range(s):
        draw.text((left - PAD, top + GAP + i * cell_h + h * FIG_SCALE / 2), rows[i], fill=TEXT, font=label_font,
                  anchor="rm")
    return np.asarray(canvas)


def traversal_cleanliness(images: np.ndarray, concept: str, seed_classes: Sequence[int],
                          classify: Callable[[np.ndarray], np.ndarray]) -> dict:
    """How cleanly a traversal (decoded images [S, T, 28, 28], float in [0, 1], steps in
    increasing order along T) changes `concept` ("thickness" or "slant", measured with
    acc.measure on every decoded image) and nothing else (the digit class, by `classify`, a
    fixed classifier: float images [N, 28, 28] -> int classes [N]).

    - `rho`: Spearman's rank correlation between step and measured value over all S*T images;
      `rho_per_seed` the same along each seed's row and `rho_seed_mean` their mean. A row whose
      measured value does not change at all has no rank order: its rho counts as 0 (the traversal
      does not move the concept), and so does `rho` when no image differs.
    - `range`: the mean over seeds of (max - min) of the measured value along the row, in `unit`
      (px for thickness, rad for slant); `range_per_seed` each.
    - `class_kept`: the fraction of the S*T images classified as their seed's class
      (`seed_classes` [S]); `class_kept_per_step` the fraction at each step.
    - `measured`: the values [S][T].
    - `rho_se`, `range_se`, `class_kept_se`: their standard errors over the seed images (a
      bootstrap over the rows for the pooled `rho`; the rows' spread over sqrt(S) for the others),
      None with one seed. Five seeds are few: a difference within these says nothing.
    """
    if concept not in CONCEPT_UNITS:
        raise ValueError(f"concept must be one of {sorted(CONCEPT_UNITS)}, got {concept!r}")
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images [S, T, H, W], got shape {list(images.shape)}")
    s, t = images.shape[:2]
    seed_classes = np.asarray(seed_classes).ravel()
    if seed_classes.shape != (s,):
        raise ValueError(f"{seed_classes.size} seed classes for {s} seeds")
    flat = measure.as_float(images.reshape(s * t, *images.shape[2:]))
    values = (measure.measure_thickness(flat) if concept == "thickness" else measure.measure_slant(flat))
    values = values.astype(np.float64).reshape(s, t)
    step = np.arange(t, dtype=np.float64)
    per_seed = [_spearman(step, row) for row in values]
    classes = np.asarray(classify(flat)).reshape(s, t)
    kept = classes == seed_classes[:, None]
    ranges = values.max(1) - values.min(1)
    return {
        "concept": concept,
        "unit": CONCEPT_UNITS[concept],
        "seeds": int(s),
        "steps": int(t),
        "rho": _spearman(np.tile(step, s), values.ravel()),
        "rho_se": _bootstrap_rho_se(step, values),
        "range_se": standard_error(ranges),
        "class_kept_se": standard_error(kept.mean(1)),
        "rho_per_seed": per_seed,
        "rho_seed_mean": float(np.mean(per_seed)),
        "range": float(ranges.mean()),
        "range_per_seed": [float(r) for r in ranges],
        "class_kept": float(kept.mean()),
        "class_kept_per_step": [float(k) for k in kept.mean(0)],
        "measured": [[float(v) for v in row] for row in values],
    }


BOOTSTRAP = 200  # resamples of the seed rows for the standard error of the pooled rho


def _bootstrap_rho_se(step: np.ndarray, values: np.ndarray) -> float | None:
    """The standard error of the pooled rho over rows `values` [S, T]: its spread over resamples of
    the S rows with replacement (a fixed generator, so the same traversal gives the same number)."""
    s = len(values)
    if s < 2:
        return None
    rows = np.random.default_rng(0).integers(0, s, size=(BOOTSTRAP, s))
    x = rankdata(np.tile(step, s)) - (s * len(step) + 1) / 2  # centred ranks of the steps (the same in every resample)
    y = rankdata(values[rows].reshape(BOOTSTRAP, -1), axis=1)
    y -= y.mean(axis=1, keepdims=True)
    norm = np.sqrt((x ** 2).sum() * (y ** 2).sum(axis=1))
    rho = np.where(norm > 0, (y @ x) / np.where(norm > 0, norm, 1.0), 0.0)  # constant rows: 0, as _spearman
    return float(np.std(rho, ddof=1))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho, 0 when either side is constant (no rank order to correlate)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(x, y).statistic
    return float(rho) if np.isfinite(rho) else 0.0


# --- images sorted along a projection ---

def sort_by_activation(images: np.ndarray, projection: np.ndarray, captions: Sequence[str], k: int = 20,
                       title: str | None = None, columns: int = 10) -> np.ndarray:
    """The k images lowest and the k highest along `projection` [N] (e.g. codes on a slot's principal
    direction): two labelled blocks of rows of `columns`, each image captioned (e.g. "t 2.1 s 0.3 c 7":
    `captions` [N]). Each block runs from its extreme inwards: lowest first, highest first. With
    fewer than 2k images the blocks split them (no image in both). Greyscale uint8 [H, W]; ties are
    broken by position (a stable sort)."""
    images = as_uint8(images)
    projection = np.asarray(projection, np.float64).ravel()
    n = len(images)
    if images.ndim != 3 or projection.shape != (n,) or len(captions) != n:
        raise ValueError(f"expected images [N, H, W], projection [N] and N captions, got {list(images.shape)}, "
                         f"{list(projection.shape)}, {len(captions)}")
    order = np.argsort(projection, kind="stable")
    low_n = min(k, (n + 1) // 2)
    high_n = min(k, n - low_n)
    low, high = order[:low_n], order[::-1][:high_n]
    blocks = [(f"lowest {low_n}", low), (f"highest {high_n}", high)]

    _, h, w = images.shape
    columns = max(1, min(columns, max(low_n, high_n, 1)))
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    fonts = caption_fonts()
    smallest = fonts[-1]
    widest = max((draw.textlength(captions[i], font=smallest) for i in np.r_[low, high]), default=0)
    cell_w = max(w * FIG_SCALE, math.ceil(widest) + 2 * PAD) + 2 * GAP  # a caption always fits at 11 px or more
    caption_h = fonts[0].size + 2 * PAD
    cell_h = h * FIG_SCALE + caption_h + GAP
    label_font = font(LABEL_PX)
    header = LABEL_PX + 2 * PAD
    content_w = columns * cell_w + GAP
    title_font, title_band = _title(title, content_w)
    width = max(content_w, _text_width([title or "", *(b[0] for b in blocks)], title_font) + 2 * PAD)
    block_rows = [max(1, -(-len(index) // columns)) for _, index in blocks]
    canvas = Image.new("L", (width, title_band + sum(header + r * cell_h for r in block_rows) + GAP), GAP_VALUE)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD), title, fill=TEXT, font=title_font)
    pixels = upscale_nearest(images, FIG_SCALE)
    y = title_band
    for (label, index), rows in zip(blocks, block_rows):
        draw.text((PAD, y + PAD), label, fill=TEXT, font=label_font)
        y += header
        for pos, i in enumerate(index):
            left, top = GAP + (pos % columns) * cell_w, y + (pos // columns) * cell_h
            canvas.paste(Image.fromarray(pixels[i]), (left + (cell_w - GAP - w * FIG_SCALE) // 2, top))
            f = fitting_font(draw, captions[i], cell_w - GAP - 2 * PAD, fonts)
            draw.text((left + (cell_w - GAP) / 2, top + h * FIG_SCALE + PAD // 2), captions[i], fill=TEXT,
                      font=f, anchor="ma")
        y += rows * cell_h
    return np.asarray(canvas)


# --- attention ---

OVERLAY_ALPHA = 0.7  # heat colour's opacity at a map's peak


def attention_overlay(images: np.ndarray, attention: dict[str, np.ndarray | torch.Tensor],
                      title: str | None = None) -> np.ndarray:
    """Where each slot looks, as one RGB image: uint8 [H, W, 3]. A first row of the input digits
    (`images` [N, 28, 28]), then one row per factor of `attention` (name -> [N, h, w], e.g. the
    Factor-Slot model's 7x7 maps), labelled with its name: each map upsampled to the image size
    bilinearly (torch `F.interpolate`, align_corners=False), scaled to its own peak, and laid over
    the digit as a heat colour from red (weak) to yellow (the peak), more opaque where the map is
    higher. Scaling to the peak shows where a slot looks, not how sharply: under each name is the
    mean entropy of its maps over these images, "H 2.31 / 3.89" (nats, of log(h*w); see
    `attention_stats`). A model without attention has no such figure (the caller leaves it out)."""
    base = as_uint8(images).astype(np.float32) / 255.0
    if base.ndim != 3:
        raise ValueError(f"expected images [N, H, W], got shape {list(base.shape)}")
    n, h, w = base.shape
    names = list(attention)
    maps = {name: _maps(attention[name], n) for name in names}
    rows = [("input", np.repeat(base[..., None], 3, axis=-1))]
    notes = {"input": ""}
    if names:
        stats = attention_stats(maps)
        notes |= {name: f"H {stats['entropy'][name]:.2f} / {stats['max_entropy']:.2f}" for name in names}
    for name in names:
        m = F.interpolate(torch.from_numpy(maps[name])[:, None], size=(h, w), mode="bilinear",
                          align_corners=False)[:, 0].numpy()
        m = np.clip(m, 0, None) / np.maximum(m.max((1, 2), keepdims=True), 1e-12)
        heat = np.stack([np.ones_like(m), m, np.zeros_like(m)], axis=-1)  # red -> yellow
        alpha = OVERLAY_ALPHA * m[..., None]
        rows.append((name, base[..., None] * (1 - alpha) + heat * alpha))
    cell_w, cell_h = w * FIG_SCALE + GAP, h * FIG_SCALE + GAP
    label_font = font(LABEL_PX)
    note_font = font(MIN_PX + 1)
    left = max(_text_width([r[0] for r in rows], label_font), _text_width(list(notes.values()), note_font)) + 2 * PAD
    content_w = left + n * cell_w + GAP
    if title is None:
        size = "x".join(map(str, maps[names[0]].shape[1:])) if names else ""
        title = f"attention: {size} maps upsampled bilinearly to {h}x{w}, scaled to each map's peak" \
            if names else "attention"
    title_font, title_band = _title(title, content_w)
    width = max(content_w, _text_width([title], title_font) + 2 * PAD)
    canvas = Image.new("RGB", (width, title_band + len(rows) * cell_h + GAP), (GAP_VALUE,) * 3)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), title, fill=(TEXT,) * 3, font=title_font)
    for r, (name, rgb) in enumerate(rows):
        y = title_band + GAP + r * cell_h
        middle = y + h * FIG_SCALE / 2
        if notes[name]:
            draw.text((left - PAD, middle - 1), name, fill=(TEXT,) * 3, font=label_font, anchor="rd")
            draw.text((left - PAD, middle + 3), notes[name], fill=(TEXT,) * 3, font=note_font, anchor="ra")
        else:
            draw.text((left - PAD, middle), name, fill=(TEXT,) * 3, font=label_font, anchor="rm")
        pixels = upscale_nearest(np.moveaxis(as_uint8(rgb), -1, 1), FIG_SCALE)  # [N, 3, H*s, W*s]
        for i in range(n):
            canvas.paste(Image.fromarray(np.ascontiguousarray(np.moveaxis(pixels[i], 0, -1))),
                         (left + GAP + i * cell_w, y))
    return np.asarray(canvas)


def attention_stats(attention: dict[str, np.ndarray | torch.Tensor]) -> dict:
    """How concentrated and how distinct the slots' attention is, each map [N, h, w] read as a
    distribution over its h*w positions (renormalised to sum 1):
    - `entropy`: {name: mean over images of the entropy in nats}; `max_entropy` = log(h*w) (log 49
      for 7x7 maps), a uniform map's;
    - `overlap`: the mean over pairs of factors and images of the histogram intersection
      sum(min(p, q)): 1 for identical maps, 0 for disjoint ones (None with a single factor);
      `overlap_pairs` {"a/b": mean over images} per pair.
    """
    names = list(attention)
    if not names:
        raise ValueError("no attention maps")
    n = len(np.asarray(_numpy(attention[names[0]])))
    p = {name: _distribution(_maps(attention[name], n)) for name in names}
    positions = next(iter(p.values())).shape[1]
    entropy = {name: float(np.mean(-np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), axis=1)))
               for name, q in p.items()}
    pairs = {f"{a}/{b}": float(np.mean(np.minimum(p[a], p[b]).sum(1))) for a, b in combinations(names, 2)}
    return {
        "entropy": entropy,
        "max_entropy": float(math.log(positions)),
        "overlap": float(np.mean(list(pairs.values()))) if pairs else None,
        "overlap_pairs": pairs,
    }


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _maps(x: np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    """Attention maps as float32 [n, h, w]."""
    m = _numpy(x).astype(np.float32)
    if m.ndim != 3 or len(m) != n:
        raise ValueError(f"expected attention maps [{n}, h, w], got shape {list(m.shape)}")
    return m


def _distribution(maps: np.ndarray) -> np.ndarray:
    """Maps [N, h, w] as distributions [N, h*w] (float64, each summing to 1; uniform where a map is all 0)."""
    flat = np.clip(maps.reshape(len(maps), -1).astype(np.float64), 0, None)
    total = flat.sum(1, keepdims=True)
    return np.where(total > 0, flat / np.where(total > 0, total, 1.0), 1.0 / flat.shape[1])


# --- text layout ---

def _text_width(texts: Sequence[str], f) -> int:
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    return math.ceil(max((draw.textlength(t, font=f) for t in texts), default=0))


def _title(title: str | None, width: int):
    """(font, band height) of a title over a figure `width` px wide: TITLE_PX, or smaller down to
    MIN_PX when that fits (a longer title widens the figure); no band without a title."""
    fonts = caption_fonts(TITLE_PX, MIN_PX)
    if not title:
        return fonts[0], 0
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    f = fitting_font(draw, title, width - 2 * PAD, fonts)
    return f, f.size + 2 * PAD + 2
