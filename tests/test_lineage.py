"""A checkpoint's curves, pieced together across the runs of its ancestors."""

from __future__ import annotations

import pytest

from acc.store import Store
from acc.store.lineage import OPEN_END, Segment, lineage, lineage_metrics, run_lineage, segments_metrics


@pytest.fixture
def forked(tmp_path):
    """A root run saving `base` at 30 and `more` at 60, and a fork from `base` saving `tip` at 50.
    The loss is the step in the root run and minus the step in the fork."""
    store = Store(tmp_path / "store.db")
    root, fork = store.create_run("root", {}), store.create_run("fork", {"from_checkpoint": "b"})
    for step in range(1, 61):
        store.log_metrics(root, step, {"loss": float(step)})
    for step in range(31, 51):
        store.log_metrics(fork, step, {"loss": -float(step), "loss/new": 1.0})
    store.flush()
    store.add_checkpoint("b", root, "base", None, 30, "/x/b", {})
    store.add_checkpoint("m", root, "more", "b", 60, "/x/m", {})
    store.add_checkpoint("t", fork, "tip", "b", 50, "/x/t", {})
    yield store
    store.close()


def test_segments_run_from_the_root_to_the_checkpoint(forked):
    assert lineage(forked, "t") == [Segment("b", 1, 0, 30), Segment("t", 2, 31, 50)]
    assert lineage(forked, "more") == [Segment("b", 1, 0, 30), Segment("m", 1, 31, 60)]  # by name too
    with pytest.raises(KeyError, match="nope"):
        lineage(forked, "nope")


def test_the_curves_share_the_parent_and_part_at_the_fork(forked):
    tip = lineage_metrics(forked, "t")
    assert tip["loss"]["step"] == list(range(1, 51))
    assert tip["loss"]["value"] == [float(s) for s in range(1, 31)] + [-float(s) for s in range(31, 51)]
    assert tip["loss/new"]["step"] == list(range(31, 51))
    more = lineage_metrics(forked, "m", keys=["loss", "absent"])
    assert more["loss"]["value"] == [float(s) for s in range(1, 61)] and more["absent"]["step"] == []


def test_long_lineages_are_downsampled_to_about_max_points(forked):
    series = lineage_metrics(forked, "t", max_points=12)["loss"]
    assert 6 <= len(series["step"]) <= 12
    assert series["step"] == sorted(series["step"]) and series["step"][-1] == 50


def test_a_deleted_parent_makes_its_child_a_root(forked):
    forked.delete_checkpoint("b")
    assert lineage(forked, "t") == [Segment("t", 2, 0, 50)]


def test_a_run_from_a_checkpoint_begins_with_that_checkpoints_curves(forked):
    assert run_lineage(forked, 2) == [Segment("b", 1, 0, 30), Segment(None, 2, 31, OPEN_END)]
    assert run_lineage(forked, 1) == [Segment(None, 1, 0, OPEN_END)]  # a fresh run: just itself
    series = segments_metrics(forked, run_lineage(forked, 2), ["loss"])["loss"]
    assert series["step"] == list(range(1, 51)) and series["value"][29:31] == [30.0, -31.0]
    window = segments_metrics(forked, run_lineage(forked, 2), ["loss"], since=25, until=35)["loss"]
    assert window["step"] == list(range(25, 36))
    with pytest.raises(KeyError):
        run_lineage(forked, 99)
