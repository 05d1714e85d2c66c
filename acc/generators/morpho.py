"""Real MNIST digits as they are, labelled with their measured thickness, slant, area and length."""

from __future__ import annotations

from typing import Literal

from acc.generators.base import Generator
from acc.measure import measure_morphometry


class MorphoMnist(Generator):
    """Unchanged MNIST digits with targets `thickness`, `slant`, `area` and `length` measured as
    Morpho-MNIST does: the natural variation, to train or score factor probes on real data."""

    class Params(Generator.Params):
        split: Literal["train", "test"] = "train"

    def generate(self, n, rng, params):
        images, labels = self.mnist_sample(params.split, n, rng)
        return images, measure_morphometry(images), labels
