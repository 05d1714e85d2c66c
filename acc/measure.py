"""Morpho-MNIST measurements (Castro et al., JMLR 2019) and the edits that set them, batched.

    thickness  2 x the mean Euclidean distance-transform value along the skeleton of the digit,
               the digit upsampled x4 (bicubic) and binarised at half intensity; in pixels of the
               28x28 image.
    slant      arctan(-mu11 / mu02) from the second-order central moments of the intensities, with
               x = column (rightwards) and y = row (downwards): positive when the top of the digit
               leans right. Radians.
    area       the ink pixels of the same binarised x4 image, in square pixels of the 28x28 image.
    length     the length of that skeleton, each link between neighbouring skeleton pixels counted
               once (1 straight, sqrt 2 diagonal), in pixels of the 28x28 image.

An image without ink measures thickness 0 and slant 0: there is no stroke, and 0 keeps means and
losses finite.

`set_thickness` redraws a digit along its skeleton with a round pen of the wanted width;
`set_slant` shears it about its centroid. Every function takes a stack of N images and loops over
rows, offsets or chunks of images, never over single images (benchmarks/bench_generators.py
times this against the per-image scikit-image way):

- bicubic upsampling is linear: two matrix products for the whole stack;
- thinning is 3x3-local and costs (passes) x (area scanned): the images are cropped to their ink
  and laid side by side in one strip, a background column between neighbours so that none sees
  another, and thinned a chunk of similar stroke widths (similar numbers of passes) at a time,
  chunks in parallel;
- the Euclidean distance is separable: one sweep down and one up the columns of the whole stack,
  then along the rows only as far as can still beat the best so far.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.morphology import skeletonize

SCALE = 4  # Morpho-MNIST measures at 4x resolution
CHUNK = 512  # strip columns per skeletonize call (about 8 digits at x4)
THREADS = min(4, os.cpu_count() or 1)  # for thinning
BATCH = 2048  # images per pass of the thickness pipeline
CALIBRATE = 64  # images measured at both resolutions when setting thickness
MAX_STEP = 0.25  # largest correction of a stroke's half-width when setting thickness, pixels


def as_float(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images uint8 [N,H,W] or [N,1,H,W] (numpy or torch) as float32 [N,H,W] in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"expected images [N,H,W] or [N,1,H,W], got shape {list(images.shape)}")
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] as uint8."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def upscale(images: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Bicubic upsampling of float images [N,H,W] by `scale`, as `F.interpolate(mode="bicubic")` does it."""
    n, h, w = images.shape
    wide = (images.reshape(n * h, w) @ _bicubic(w, scale).T).reshape(n, h, w * scale)  # one big product first
    return _bicubic(h, scale) @ wide


def _bicubic(size: int, scale: int) -> np.ndarray:
    """The [size*scale, size] matrix of 1-D bicubic upsampling: torch's own weights, read off the identity."""
    eye = torch.eye(size).reshape(size, 1, size, 1)
    return F.interpolate(eye, size=(size * scale, 1), mode="bicubic")[:, 0, :, 0].T.numpy()


def binarise(hires: np.ndarray) -> np.ndarray:
    """Ink where the (upsampled) intensity is at least half."""
    return hires >= 0.5


# --- skeletons and thickness ---

@dataclass
class Strip:
    """Binary images side by side in one 2-D image: each cropped to its ink columns, all to the rows
    with ink anywhere, a background column before each and background rows above and below."""

    pixels: np.ndarray  # bool [rows, columns]
    image: np.ndarray  # int64 [columns]: the image each column comes from (-1 between images)
    column: np.ndarray  # int64 [columns]: which of that image's columns
    top: int  # the image row shown in strip row 0
    chunks: list[tuple[slice, slice]]  # (rows, columns) of each skeletonize call, background all round

    def skeleton(self) -> np.ndarray:
        """`skimage.morphology.skeletonize` of every image, laid out like `pixels`. Chunks thin on
        THREADS threads: skeletonize releases the GIL."""
        skeleton = np.zeros_like(self.pixels)
        with ThreadPoolExecutor(THREADS) as pool:
            thin = pool.map(skeletonize, (self.pixels[chunk] for chunk in self.chunks))
            for chunk, part in zip(self.chunks, thin):
                skeleton[chunk] = part
        return skeleton


def strip(binary: np.ndarray, key: np.ndarray | None = None) -> Strip:
    """Lay binary images [N,H,W] out in a Strip, sorted by `key` (e.g. stroke width) so that a chunk
    holds images that thin in similar numbers of passes. Images without ink are left out."""
    n, _, w = binary.shape
    ink_rows, ink_columns = binary.any(2), binary.any(1)
    order = np.arange(n) if key is None else np.argsort(key, kind="stable")
    order = order[ink_columns[order].any(1)]

    # Tile i: a gap column, then the ink columns of image order[i], which start at left[i].
    left = ink_columns[order].argmax(1)
    width = w - ink_columns[order, ::-1].argmax(1) - left + 1
    start = np.cumsum(width) - width
    image = np.repeat(order, width)
    column = np.arange(width.sum()) - np.repeat(start + 1 - left, width)
    image[start] = -1
    rows = _span(ink_rows.any(0))
    pixels = np.zeros((rows.stop - rows.start + 2, len(image) + 1), bool)  # background above, below, at the end
    pixels[1:-1, :-1] = binary[image, rows, np.maximum(column, 0)].T & (image >= 0)

    # Chunks of whole tiles, about CHUNK columns each, from the gap before their first tile to the
    # gap after their last, and from the row above their ink to the row below it.
    chunk = start // CHUNK
    first = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]]) if len(order) else np.zeros(0, int)
    ends = np.r_[start[first[1:]], len(image)] + 1
    chunk_rows = np.logical_or.reduceat(ink_rows[order], first, axis=0) if len(order) else []
    chunks = [(slice(r.start - rows.start, r.stop - rows.start + 2), slice(start[f], end))
              for f, end, r in zip(first, ends, map(_span, chunk_rows))]
    return Strip(pixels, image, column, rows.start - 1, chunks)


def _span(flags: np.ndarray) -> slice:
    """From the first to the last True (empty when none)."""
    where = np.flatnonzero(flags)
    return slice(where[0], where[-1] + 1) if len(where) else slice(0, 0)


def skeletonise(binary: np.ndarray) -> np.ndarray:
    """The skeleton of each binary image [N,H,W]: exactly `skimage.morphology.skeletonize` of each."""
    s = strip(binary)
    row, col = np.nonzero(s.skeleton())
    skeleton = np.zeros_like(binary)
    skeleton[s.image[col], row + s.top, s.column[col]] = True
    return skeleton


def _column_distance(mask: np.ndarray, cap: int, down: bool = True, up: bool = True) -> np.ndarray:
    """For every pixel of `mask` (rows first: [rows, ...]), the distance along its column to the
    nearest True pixel, at most `cap`: int16. Sweeping `down` finds those at or above it, sweeping
    `up` those at or below; both by default."""
    out = np.full(mask.shape, cap, np.int16)
    for sweep, rows in ((down, range(len(mask))), (up, range(len(mask) - 1, -1, -1))):
        if not sweep:
            continue
        last = np.full(mask.shape[1:], cap, np.int16)
        for y in rows:
            last = np.minimum(last + 1, cap) * ~mask[y]
            np.minimum(out[y], last, out=out[y])
    return out


def _inside_distance(pixels: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """The Euclidean distance transform of a 2-D binary image (distance to the nearest background
    pixel, as `scipy.ndimage.distance_transform_edt`) at the pixels with flat indices `flat`. Every
    row must start and end with background.

    Column distances first, then columns o = 1, 2, ... away along the row: they can only help while
    o**2 is below the best so far, so each pixel stops as soon as it has its answer (and before it
    could pass the background around its own tile).
    """
    column = _column_distance(~pixels, len(pixels)).ravel()
    best = column[flat].astype(np.float32) ** 2
    todo = np.arange(len(flat))
    o = 1
    while len(todo := todo[o * o < best[todo]]):
        at = flat[todo]
        nearer = np.minimum(column[at - o], column[at + o]).astype(np.float32)
        best[todo] = np.minimum(best[todo], nearer ** 2 + o * o)
        o += 1
    return np.sqrt(best)


def _links(skeleton: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """For the skeleton pixels at flat indices `flat` of a 2-D skeleton whose border is background,
    the length of their links to the skeleton pixels right of them, below them and diagonally below
    (1 or sqrt 2): summed, every link is counted once, as Morpho-MNIST measures length."""
    k, w = skeleton.ravel().astype(np.float64), skeleton.shape[1]
    return k[flat + 1] + k[flat + w] + np.sqrt(2) * (k[flat + w - 1] + k[flat + w + 1])


def skeleton_measures(binary: np.ndarray, key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(thickness, length) of binary images [N,H,W] in their own pixels, from one thinning: float64
    [N] each, 0 without ink. `key`, a rough stroke width per image, only groups the work."""
    s = strip(binary, key)
    skeleton = s.skeleton()
    flat = np.flatnonzero(skeleton)
    image = s.image[flat % s.pixels.shape[1]]
    depth = _inside_distance(s.pixels, flat)
    count = np.bincount(image, minlength=len(binary))
    length = np.bincount(image, _links(skeleton, flat), minlength=len(binary))
    return 2 * np.bincount(image, depth, minlength=len(binary)) / np.maximum(count, 1), length


def thickness(binary: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """Morpho-MNIST thickness of binary images [N,H,W] in their own pixels (see `skeleton_measures`)."""
    return skeleton_measures(binary, key)[0]


def _width_key(images: np.ndarray) -> np.ndarray:
    """Ink over edge length, about half the stroke width: enough to sort images by for thinning."""
    edges = np.abs(np.diff(images, axis=1)).sum((1, 2)) + np.abs(np.diff(images, axis=2)).sum((1, 2))
    return images.sum((1, 2)) / np.maximum(edges, 1e-6)


def measure_thickness(images: np.ndarray | torch.Tensor, scale: int = SCALE) -> np.ndarray:
    """Stroke thickness of each image (uint8 [N,28,28] or [N,1,28,28]) in pixels: float32 [N]."""
    def measure(images):
        return (thickness(binarise(upscale(images, scale)), _width_key(images)) / scale).astype(np.float32)
    return _in_batches(measure, as_float(images))


def measure_morphometry(images: np.ndarray | torch.Tensor, scale: int = SCALE) -> dict[str, np.ndarray]:
    """Morpho-MNIST's thickness, slant, area and length of each image (uint8 [N,28,28] or
    [N,1,28,28]): float32 [N] each, from one upsampling and one thinning."""
    images = as_float(images)

    def measure(images):
        binary = binarise(upscale(images, scale))
        thick, length = skeleton_measures(binary, _width_key(images))
        return np.stack([thick / scale, binary.sum((1, 2)) / scale ** 2, length / scale], 1).astype(np.float32)
    thick, area, length = _in_batches(measure, images).T
    return {"thickness": thick, "slant": measure_slant(images), "area": area, "length": length}


def _in_batches(fn, *arrays: np.ndarray) -> np.ndarray:
    """`fn` on BATCH images at a time, so that memory stays bounded (a x4 float image is 50 KB)."""
    n = len(arrays[0])
    if n <= BATCH:
        return fn(*arrays)
    return np.concatenate([fn(*(a[i:i + BATCH] for a in arrays)) for i in range(0, n, BATCH)])


# --- redrawing strokes ---

def skeleton_distance(images: np.ndarray | torch.Tensor, reach: float, scale: int = 2) -> np.ndarray:
    """Distance from the centre of every pixel to the nearest point of the digit's skeleton, taken
    at `scale` x resolution (x2 places a centre line to half a pixel at an eighth of x4's cost to
    thin), in pixels: float32 [N,H,W], exact up to `reach`, at least `reach` beyond.

    Separable: the distance to the skeleton down each hi-res column, then the nearest over the
    columns in reach. A pixel centre lies half a hi-res pixel below hi-res row s*i + s/2 - 1 and
    above the next, and likewise between two hi-res columns.
    """
    if scale % 2:
        raise ValueError(f"scale must be even (pixel centres fall between hi-res pixels), got {scale}")
    skeleton = skeletonise(binarise(upscale(as_float(images), scale)))
    skeleton = np.ascontiguousarray(skeleton.transpose(1, 0, 2))  # rows first, for the sweeps
    cap = int(np.ceil(reach * scale)) + 1
    first = scale // 2 - 1
    above = _column_distance(skeleton, cap, up=False)[first::scale]
    below = _column_distance(skeleton, cap, down=False)[first + 1::scale]
    vertical = (np.minimum(above, below) + np.float32(0.5)) ** 2
    vertical = np.pad(vertical, ((0, 0), (0, 0), (cap, cap)), constant_values=cap * cap)
    best = np.full(vertical.shape[:2] + (skeleton.shape[2] // scale,), np.inf, np.float32)
    for o in range(1, cap + 1):  # the hi-res columns o - 1/2 left and right of each centre
        left = vertical[:, :, cap + first + 1 - o::scale][:, :, :best.shape[2]]
        right = vertical[:, :, cap + first + o::scale][:, :, :best.shape[2]]
        np.minimum(best, np.minimum(left, right) + (o - 0.5) ** 2, out=best)
    return np.sqrt(best).transpose(1, 0, 2) / scale


def draw(distance: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Strokes of half-width `radius` [N] (pixels) around a skeleton, from every pixel's distance to
    it (`skeleton_distance`): ink fades from full to none across the pixel on the edge. uint8."""
    return to_uint8(0.5 + radius[:, None, None] - distance)


def set_thickness(images: np.ndarray | torch.Tensor, target: np.ndarray) -> np.ndarray:
    """Digits redrawn along their skeletons with strokes `target` [N] pixels thick, as
    `measure_thickness` reads them where strokes do not merge: uint8 [N,H,W].

    Drawn at half-width target/2, measured, and the half-width corrected by half the error. The
    correction measures at x2, 8 times cheaper than x4 and a near-constant amount thicker, which a
    sample measured both ways gives. It is capped: a larger error means that strokes merged or a
    loop filled in, which a thinner stroke would only trade for a broken digit.
    """
    return _in_batches(_set_thickness, as_float(images), np.asarray(target, np.float64))


def _set_thickness(images: np.ndarray, target: np.ndarray) -> np.ndarray:
    radius = target / 2
    distance = skeleton_distance(images, reach=radius.max(initial=0) + MAX_STEP + 0.5)  # to the widest edge
    first = draw(distance, radius)
    coarse = measure_thickness(first, scale=2)
    sample = slice(0, CALIBRATE)
    offset = np.median(coarse[sample] - measure_thickness(first[sample])) if len(target) else 0.0
    step = (target - (coarse - offset)) / 2  # the thickness is twice the half-width
    return draw(distance, radius + np.clip(step, -MAX_STEP, MAX_STEP))


# --- slant ---

def moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y mean, mu11, mu02) of float images [N,H,W], float64; x = column, y = row."""
    _, h, w = images.shape
    y = np.arange(h)
    rows = images.sum(2, dtype=np.float64)  # [N,H]: the ink of each row
    row_x = images @ np.arange(w, dtype=np.float64)  # [N,H]: sum of x * ink per row
    mass = rows.sum(1)
    safe = np.maximum(mass, 1e-12)
    xm, ym = row_x.sum(1) / safe, rows @ y / safe
    dy = y - ym[:, None]
    mu11 = (dy * (row_x - xm[:, None] * rows)).sum(1)  # sum of (x - xm)(y - ym) * ink
    mu02 = (dy ** 2 * rows).sum(1)
    return ym, mu11, mu02


def slant(images: np.ndarray) -> np.ndarray:
    """Slant of float images [N,H,W] in radians, float64; 0 where undefined (no ink, or ink in one row)."""
    _, mu11, mu02 = moments(images)
    return np.where(mu02 > 1e-12, np.arctan(-mu11 / np.maximum(mu02, 1e-12)), 0.0)


def measure_slant(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Slant of each image (uint8 [N,28,28] or [N,1,28,28]) in radians: float32 [N]."""
    return slant(as_float(images)).astype(np.float32)


def shear(images: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Float images [N,H,W] sheared horizontally about their centroid so that tan(slant) grows by k [N].

    Row y moves right by k (y_mean - y), i.e. x' = x - k (y - y_mean): then mu11' = mu11 - k mu02
    with mu02 and the centroid unchanged, so -mu11'/mu02' = -mu11/mu02 + k. Linear interpolation
    along a row keeps its mass and its centre of mass, so this holds on the pixel grid too, up to
    ink pushed out of the frame.
    """
    n, h, w = images.shape
    ym, _, _ = moments(images)
    shift = k[:, None] * (np.arange(h) - ym[:, None])  # [N,H]: output x reads input x + shift
    whole = np.floor(shift)
    frac = (shift - whole).astype(np.float32)[:, :, None]
    whole = np.clip(whole, -w - 1, w).astype(np.int64)  # beyond that the row reads only zeros anyway
    padded = np.zeros((n * h, 3 * w + 3), images.dtype)  # zeros either side of every row
    padded[:, w + 1:2 * w + 1] = images.reshape(n * h, w)
    window = np.take_along_axis(padded, (w + 1 + whole).reshape(-1, 1) + np.arange(w + 1), axis=1).reshape(n, h, w + 1)
    left = window[:, :, :-1]
    return left + frac * (window[:, :, 1:] - left)


def set_slant(images: np.ndarray | torch.Tensor, target: np.ndarray) -> np.ndarray:
    """Digits sheared about their centroid to slant `target` [N] radians: uint8 [N,H,W]. The shear
    follows from the moments; one correction, from the original, covers ink pushed out of the
    frame and rounding."""
    images = as_float(images)
    want = np.tan(np.asarray(target, np.float64))
    k = want - np.tan(slant(images))
    k += want - np.tan(slant(as_float(to_uint8(shear(images, k)))))
    return to_uint8(shear(images, k))
