"""A checkpoint's history: the curves that led to it, across the runs of its ancestors.

A fork trains in a run of its own that starts at its parent's step, so the curve that led to a
checkpoint is pieced together from segments: its own run from just after its parent's step to its
step, the parent's run before that, and so on up to the root. Two checkpoints forked from one
parent then share their curves up to the fork and differ after it, which is what comparing them
is about.
"""

from __future__ import annotations

from dataclasses import dataclass

from acc.store.sqlite import Store


@dataclass(frozen=True)
class Segment:
    checkpoint: str
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


def lineage_metrics(store: Store, checkpoint_id: str, keys: list[str] | None = None,
                    max_points: int = 2000) -> dict[str, dict[str, list]]:
    """Series `{key: {"step", "value"}}` from the root to the checkpoint, as `Store.query_metrics`
    returns them; each segment gets a share of `max_points` in proportion to its steps."""
    segments = lineage(store, checkpoint_id)
    total = sum(s.until - s.since + 1 for s in segments) or 1
    series: dict[str, dict[str, list]] = {key: {"step": [], "value": []} for key in keys or []}
    for segment in segments:
        budget = max(3, max_points * (segment.until - segment.since + 1) // total)
        part = store.query_metrics(segment.run_id, keys, segment.since, segment.until, budget)
        for key, points in part.items():
            into = series.setdefault(key, {"step": [], "value": []})
            into["step"] += points["step"]
            into["value"] += points["value"]
    return dict(sorted(series.items()))
