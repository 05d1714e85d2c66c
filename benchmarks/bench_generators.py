"""Benchmark of the batched thickness and slant generators against the per-image scikit-image way.

Run by hand: `python benchmarks/bench_generators.py`. Measured in the same run: the straightforward
implementation, one image at a time, of the same operations (Morpho-MNIST's: `rescale` x4 with
cubic splines, threshold, `skeletonize`, `distance_transform_edt`; thickness set by dilating or
eroding with a disk as its SetThickness does; slant set with `warp` and an affine shear, moments
from `moments_central`), on NAIVE digits, and the batched generators on BATCHED digits, each the
best of REPEATS runs. Prints each way's milliseconds per image and mean |measured - target|, and
last the speed-up per image. The batched thinning uses `acc.measure.THREADS` threads.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
from scipy import ndimage
from skimage import measure, morphology, transform

from acc.generators.slant import SlantGenerator
from acc.generators.thickness import ThicknessGenerator
from acc.measure import measure_slant, measure_thickness

NAIVE = 200
BATCHED = 2000
REPEATS = 3  # best of, for each way
SCALE = 4


def hires_binary(image: np.ndarray) -> np.ndarray:
    return transform.rescale(image / 255.0, SCALE, order=3) >= 0.5


def binary_thickness(binary: np.ndarray) -> float:
    skeleton = morphology.skeletonize(binary)
    return 2 * ndimage.distance_transform_edt(binary)[skeleton].mean() / SCALE if skeleton.any() else 0.0


def naive_thickness(image: np.ndarray) -> float:
    return binary_thickness(hires_binary(image))


def naive_set_thickness(image: np.ndarray, target: float) -> np.ndarray:
    """Dilate (or erode) the upsampled digit by a disk of radius 4 x half the missing thickness."""
    binary = hires_binary(image)
    delta = target - binary_thickness(binary)
    disk = morphology.disk(round(SCALE * abs(delta) / 2))
    binary = morphology.dilation(binary, disk) if delta >= 0 else morphology.erosion(binary, disk)
    return (transform.downscale_local_mean(binary.astype(float), (SCALE, SCALE)) * 255).round().astype(np.uint8)


def naive_slant(image: np.ndarray) -> float:
    mu = measure.moments_central(image.astype(float), order=2)  # mu[p, q]: p over rows (y), q over columns (x)
    return float(np.arctan(-mu[1, 1] / mu[2, 0]))


def naive_shear(image: np.ndarray, k: float) -> np.ndarray:
    m = measure.moments(image, order=1)
    y_mean = m[1, 0] / m[0, 0]
    # warp reads output (x, y) from input (x + k (y - y_mean), y): tan(slant) grows by k.
    shear = transform.AffineTransform(matrix=np.array([[1, k, -k * y_mean], [0, 1, 0], [0, 0, 1]]))
    return transform.warp(image, shear, order=1)


def naive_set_slant(image: np.ndarray, target: float) -> np.ndarray:
    image = image / 255.0
    k = np.tan(target) - np.tan(naive_slant(image))
    k += np.tan(target) - np.tan(naive_slant(naive_shear(image, k)))  # one correction, as the generator does
    return (naive_shear(image, k) * 255).round().astype(np.uint8)


def best_of(repeats: int, fn):
    """(fastest wall-clock seconds of `repeats` calls, the last result): others' load only slows a run."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def compare(name, generator, naive_set, naive_measure, batched_measure, digits, rng) -> float:
    """Both ways on the same kind of request: print ms/image and mean |measured - target|; the speed-up."""
    params = generator.Params()
    pick = rng.integers(len(digits), size=NAIVE)
    target = rng.uniform(params.low, params.high, size=NAIVE)

    def naive():
        images = np.stack([naive_set(digit, t) for digit, t in zip(digits[pick], target)])
        return images, np.array([naive_measure(image) for image in images])

    naive_s, (images, measured) = best_of(REPEATS, naive)
    batched_s, (_, targets, _) = best_of(REPEATS, lambda: generator.generate(BATCHED, np.random.default_rng(1), params))
    naive_ms, batched_ms = naive_s / NAIVE * 1e3, batched_s / BATCHED * 1e3

    batched_error = np.abs(targets[name] - targets[f"{name}_target"]).mean()
    print(f"{name}: per-image scikit-image {naive_ms:.2f} ms/image on {NAIVE} digits "
          f"(mean |error| {np.abs(measured - target).mean():.4f}), "
          f"batched {batched_ms:.3f} ms/image on {BATCHED} (mean |error| {batched_error:.4f})")
    # The two measures agree (rescale's cubic splines are not quite torch's bicubic).
    print(f"{name}: batched vs per-image measure of the same images: mean |difference| "
          f"{np.abs(batched_measure(images) - measured).mean():.4f}")
    return naive_ms / batched_ms


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as cache:
        thickness, slant = ThicknessGenerator(cache), SlantGenerator(cache)
        digits, _ = thickness.mnist()  # parsed once and cached: the timings leave loading out
        speedup = {
            "thickness": compare("thickness", thickness, naive_set_thickness, naive_thickness, measure_thickness,
                                 digits, rng),
            "slant": compare("slant", slant, naive_set_slant, naive_slant, measure_slant, digits, rng),
        }
    print(f"speedup per image: thickness {speedup['thickness']:.1f}x, slant {speedup['slant']:.1f}x")


if __name__ == "__main__":
    main()
