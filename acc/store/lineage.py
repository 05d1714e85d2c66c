"""A checkpoint's (or a run's) history: the curves that led to it, across the runs of its ancestors.

A fork trains in a run of its own that starts at its parent's step, so the curve that led to a
checkpoint is pieced together from segments: its own run from just after its parent's step to its
step, the parent's run before that, and so on up to the root. Two checkpoints forked from one
parent then share their curves up to the fork and differ after it, which is what comparing them
is about. A run started from a checkpoint (a load or a fork) is that checkpoint's lineage followed
by the run's own points, so its charts show where it came from, as W&B shows a forked run. A run
that continues a crashed one from its autosave is the crashed run's lineage up to the autosave's
step, then its own points.
"""

from __future__ import annotations

from dataclasses import dataclass

from acc.store.sqlite import Store

OPEN_END = 1 << 62  # a run still training has no last step yet


@dataclass(frozen=True)
class Segment:
    checkpoint: str | None  # the checkpoint the segment ends at; None for a run's own, open end
    run_id: int
    since: int  # first step, inclusive
    until: int  # last step, inclusive


def lineage(store: Store, checkpoint_id: str) -> list[Segment]:
    """The segments that led to a checkpoint (by id or name), oldest first. KeyError if unknown."""
    row = store.checkpoint(checkpoint_id)
    if row is None:
        raise KeyError(f"no checkpoint with id or name {checkpoint_id!r}")
    segments: list[Segment] = []
    seen: set[str] = set()
    while row is not None and row["id"] not in seen:  # parents are older, but never loop on bad data
        seen.add(row["id"])
        parent = store.checkpoint(row["parent"]) if row["parent"] else None
        since = parent["step"] + 1 if parent is not None else 0
        if row["run_id"] is not None and since <= row["step"]:
            segments.append(Segment(row["id"], row["run_id"], since, row["step"]))
        row = parent
    return segments[::-1]


def run_lineage(store: Store, run_id: int) -> list[Segment]:
    """The segments of a run with its ancestors': the lineage of the run it continues after a
    crash, or of the checkpoint it started from (if any, and if it still exists), then the run
    itself. KeyError if the run is unknown."""
    run = store.run(run_id)
    if run is None:
        raise KeyError(f"no run with id {run_id}")
    continued = run["config"].get("continues")
    if continued and store.run(continued["run_id"]) is not None:  # a restart after a crash
        before = [Segment(s.checkpoint, s.run_id, s.since, min(s.until, continued["step"]))
                  for s in run_lineage(store, continued["run_id"]) if s.since <= continued["step"]]
        return before + [Segment(None, run_id, continued["step"] + 1, OPEN_END)]
    origin = run["config"].get("from_checkpoint")
    start = store.checkpoint(origin) if origin else None
    if start is None:
        return [Segment(None, run_id, 0, OPEN_END)]
    return lineage(store, start["id"]) + [Segment(None, run_id, start["step"] + 1, OPEN_END)]


def segments_metrics(store: Store, segments: list[Segment], keys: list[str] | None = None,
                     since: int | None = None, until: int | None = None,
                     max_points: int = 2000) -> dict[str, dict[str, list]]:
    """Series `{key: {"step", "value"}}` along the segments, between `since` and `until`, as
    `Store.query_metrics` returns them; each segment gets a share of `max_points` in proportion
    to its steps."""
    clipped = []
    for s in segments:
        lo, hi = max(s.since, since or 0), min(s.until, OPEN_END if until is None else until)
        if s.until == OPEN_END:  # for its share of the points: where the run has got to
            hi = min(hi, store.last_step(s.run_id) or lo)
        if lo <= hi:
            clipped.append((s, lo, hi))
    total = sum(hi - lo + 1 for _, lo, hi in clipped) or 1
    series: dict[str, dict[str, list]] = {key: {"step": [], "value": []} for key in keys or []}
    for segment, lo, hi in clipped:
        budget = max(3, max_points * (hi - lo + 1) // total)
        part = store.query_metrics(segment.run_id, keys, lo, hi, budget)
        for key, points in part.items():
            into = series.setdefault(key, {"step": [], "value": []})
            into["step"] += points["step"]
            into["value"] += points["value"]
    return dict(sorted(series.items()))


def lineage_metrics(store: Store, checkpoint_id: str, keys: list[str] | None = None,
                    max_points: int = 2000) -> dict[str, dict[str, list]]:
    """The curves from the root of the tree to a checkpoint (see `segments_metrics`)."""
    return segments_metrics(store, lineage(store, checkpoint_id), keys, max_points=max_points)
