"""Real MNIST digits sheared to a chosen slant (Morpho-MNIST's measure, in radians)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from acc.generators.base import Generator, TargetRange
from acc.measure import measure_slant, set_slant


class SlantGenerator(Generator):
    """MNIST digits sheared to a random slant; targets `slant` (measured, > 0 leans right) and `slant_target`."""

    class Params(TargetRange):
        low: float = Field(-0.6, ge=-1.0, le=1.0, description="most left-leaning slant, radians")
        high: float = Field(0.6, ge=-1.0, le=1.0, description="most right-leaning slant, radians")

    def generate(self, n, rng, params):
        digits, labels = self.mnist_sample(params.split, n, rng)
        target = rng.uniform(params.low, params.high, size=n)
        images = set_slant(digits, target)
        targets = {"slant": measure_slant(images), "slant_target": target.astype(np.float32)}
        return images, targets, labels
