"""Min/max/last downsampling of metric series, and the multi-resolution rollups that make it fast.

A long series is shown as at most `max_points` points: its step range is cut into equal-width
buckets and each bucket keeps its minimum, its maximum and its last point, so spikes are never
hidden and the final value is exact.

To answer without reading every raw row, the writer keeps *rollups*: for each level `s` in
`LEVELS`, one row per block of 2^s steps (`bucket = step >> s`) holding that block's min, max and
last point. A query picks a level whose blocks are a few times narrower than its buckets and makes
each bucket a whole number of blocks (`width = m * 2^s`, counted from `lo` rounded down to a block
boundary), so that every block lies in exactly one bucket. The partial blocks at the ends of the
range are covered by finer levels and, at the very ends, by raw rows: the answer is exact.

Ties are broken the same way everywhere: the min (max) is the point with the lowest (highest)
value and, among equal values, the lowest step; the last point is the one with the highest step
and, among equal steps, the one written last.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

LEVELS = tuple(range(2, 21, 2))  # blocks of 2^s steps, each level 4x coarser than the one before
SERIES = 63  # a level with one block per series (step >> 63 == 0): the run's keys and last steps
# Blocks per bucket at least: fitting buckets to whole blocks then keeps >= 2/3 of the buckets asked
# for, and a query reads fewer than 4 * 2 = 8 blocks per bucket.
MIN_BLOCKS = 2


@dataclass(frozen=True)
class Summary:
    """Min, max and last point of each of a set of groups of points, as parallel arrays."""

    min_step: np.ndarray
    min_value: np.ndarray
    max_step: np.ndarray
    max_value: np.ndarray
    last_step: np.ndarray
    last_value: np.ndarray

    @classmethod
    def of_points(cls, step: np.ndarray, value: np.ndarray) -> Summary:
        """One group per point."""
        step = np.asarray(step, dtype=np.int64)
        value = np.asarray(value, dtype=np.float64)
        return cls(step, value, step, value, step, value)

    @classmethod
    def of_columns(cls, cols: list) -> Summary:
        """From the columns min_step, min_value, max_step, max_value, last_step, last_value."""
        return cls(*(np.array(c, dtype=t) for c, t in zip(cols, (np.int64, np.float64) * 3)))

    def rows(self) -> list[tuple]:
        """As tuples of Python numbers, in the column order of `of_columns`."""
        return list(zip(*(getattr(self, f).tolist() for f in self.__dataclass_fields__)))


def merge(keys: tuple[np.ndarray, ...], s: Summary,
          seq: np.ndarray | None = None) -> tuple[tuple[np.ndarray, ...], Summary]:
    """Merge the groups that have equal `keys` into one each; returns the distinct keys, in
    ascending order, and their summaries. `seq` orders groups that share a last step (duplicate
    steps among raw points); leave it out when the groups cover disjoint step ranges."""
    rev = keys[::-1]  # np.lexsort sorts by its last key first
    by_min = np.lexsort((s.min_step, s.min_value) + rev)
    by_max = np.lexsort((s.max_step, -s.max_value) + rev)
    by_last = np.lexsort(((seq,) if seq is not None else ()) + (s.last_step,) + rev)
    # All three orders sort by the keys first, so groups start at the same positions in each.
    starts = np.zeros(len(by_last), dtype=bool)
    starts[0] = True
    for k in keys:
        k = k[by_last]
        starts[1:] |= k[1:] != k[:-1]
    first = np.flatnonzero(starts)
    last = np.append(first[1:], len(by_last)) - 1
    lo, hi, end = by_min[first], by_max[first], by_last[last]
    merged = Summary(s.min_step[lo], s.min_value[lo], s.max_step[hi], s.max_value[hi],
                     s.last_step[end], s.last_value[end])
    return tuple(k[end] for k in keys), merged


def rollups(run: np.ndarray, key: np.ndarray, step: np.ndarray,
            value: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, Summary]]:
    """Summarise a batch of points, given in the order they were written, at every rollup level.

    Yields, for each level in `LEVELS` and then `SERIES`: (level, run, key, bucket, Summary), one
    entry per block touched."""
    s = Summary.of_points(step, value)
    bucket = s.last_step
    seq: np.ndarray | None = np.arange(len(bucket))
    shift = 0
    for level in LEVELS + (SERIES,):
        # Each level is built from the one below: a block of it is a union of their blocks.
        (run, key, bucket), s = merge((run, key, bucket >> (level - shift)), s, seq)
        seq, shift = None, level
        yield level, run, key, bucket, s


def plan(lo: int, hi: int, buckets: int) -> tuple[int, int, int]:
    """Bucket geometry for the steps lo..hi cut into at most `buckets` buckets.

    Returns (level, origin, width): bucket i holds steps origin + i*width .. origin + (i+1)*width - 1.
    `level` (0: raw points) is the coarsest whose blocks fit MIN_BLOCKS times in a bucket; `origin`
    and `width` are multiples of its block width."""
    ideal = (hi - lo + 1) / buckets
    level = max((s for s in LEVELS if (MIN_BLOCKS << s) <= ideal), default=0)
    origin = lo >> level << level
    block_span = -(-(hi - origin + 1) // (buckets << level))  # ceil: blocks per bucket
    return level, origin, block_span << level


def cover(lo: int, hi: int, level: int) -> list[tuple[int, int, int]]:
    """Cut the steps lo..hi into whole blocks of `level` and finer levels, coarsest first.

    Returns (level, first, last) runs: blocks first..last of that level, or for level 0 the raw
    steps first..last. Only the two ends of the range fall through to finer levels."""
    if level == 0:
        return [(0, lo, hi)]
    finer = max((s for s in LEVELS if s < level), default=0)
    first, last = -(-lo >> level), ((hi + 1) >> level) - 1  # the blocks wholly inside lo..hi
    if first > last:
        return cover(lo, hi, finer)
    runs = [(level, first, last)]
    if lo < first << level:
        runs += cover(lo, (first << level) - 1, finer)
    if (last + 1) << level <= hi:
        runs += cover((last + 1) << level, hi, finer)
    return runs


def points(s: Summary) -> tuple[list[int], list[float]]:
    """The points that stand for each group, groups in order: its min and max in step order, then
    its last point, each point once."""
    swap = (s.max_step < s.min_step) | ((s.max_step == s.min_step) & (s.max_value < s.min_value))
    a_step, a_value = np.where(swap, s.max_step, s.min_step), np.where(swap, s.max_value, s.min_value)
    b_step, b_value = np.where(swap, s.min_step, s.max_step), np.where(swap, s.min_value, s.max_value)
    steps = np.stack([a_step, b_step, s.last_step], axis=1)
    values = np.stack([a_value, b_value, s.last_value], axis=1)
    keep = np.ones(steps.shape, dtype=bool)
    keep[:, 0] = ~((a_step == b_step) & (a_value == b_value)) & ~((a_step == s.last_step) & (a_value == s.last_value))
    keep[:, 1] = ~((b_step == s.last_step) & (b_value == s.last_value))
    return steps[keep].tolist(), values[keep].tolist()
