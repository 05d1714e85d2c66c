"""The factoring evaluation's held-out sets: test digits only, measured, cached, rebuilt when stale."""

from __future__ import annotations

import numpy as np

from acc.eval.data import SOURCES, EvalSetsConfig, evaluation_sets
from acc.mnist import load_mnist

SMALL = EvalSetsConfig(natural=200, generated=60)


def test_the_sets_come_from_test_digits_only_and_are_measured(tmp_path, mnist_cache, monkeypatch):
    real = load_mnist

    def test_split_only(cache_dir=None, split="train"):
        if split != "test":
            raise AssertionError("the evaluation sets read the train split")
        return real(cache_dir, split)

    monkeypatch.setattr("acc.eval.data.load_mnist", test_split_only)
    monkeypatch.setattr("acc.generators.base.load_mnist", test_split_only)
    import acc.generators.base as base
    base._mnist.cache_clear()  # a digit cache filled by another test holds no split check
    try:
        sets = evaluation_sets(tmp_path / "sets", mnist_cache, SMALL)
    finally:
        base._mnist.cache_clear()
    assert [len(sets.sets[s]) for s in SOURCES] == [200, 60, 60]
    for data in sets.sets.values():
        assert {"thickness", "slant", "area", "length"} <= set(data.targets)
        assert data.labels.min() >= 0
    natural = sets.sets["natural"]
    assert np.bincount(natural.labels.numpy()).tolist() == [20] * 10  # balanced over classes
    train = {bytes(image.numpy()) for image in real(mnist_cache, "train").images}
    test = {bytes(image.numpy()) for image in real(mnist_cache, "test").images}
    assert all(bytes(image.numpy()) in test and bytes(image.numpy()) not in train for image in natural.images)
    thick = sets.sets["thickness"].targets
    assert thick["thickness"].min() < 2.5 and thick["thickness"].max() > 4.0  # the generated range shows
    assert abs(float(np.corrcoef(thick["thickness"], thick["thickness_target"])[0, 1])) > 0.8
    merged, source = sets.all()
    assert len(merged) == 320 and np.bincount(source).tolist() == [200, 60, 60]


def test_the_sets_are_cached_and_rebuilt_when_made_differently(tmp_path, mnist_cache):
    first = evaluation_sets(tmp_path / "sets", mnist_cache, SMALL)
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "sets").iterdir()}
    again = evaluation_sets(tmp_path / "sets", mnist_cache, SMALL)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "sets").iterdir()} == files  # read, not made
    for source in SOURCES:
        assert (first.sets[source].images == again.sets[source].images).all()
    other = evaluation_sets(tmp_path / "sets", mnist_cache, EvalSetsConfig(natural=200, generated=60, seed=1))
    assert other.info["key"] != first.info["key"]
    assert not (other.sets["thickness"].images == first.sets["thickness"].images).all()

    damaged = next((tmp_path / "sets").glob(f"slant-{first.info['key']}.pt"))
    damaged.write_bytes(b"not a dataset")
    rebuilt = evaluation_sets(tmp_path / "sets", mnist_cache, SMALL)
    assert (rebuilt.sets["slant"].images == first.sets["slant"].images).all()
