"""Real MNIST digits redrawn at a chosen stroke thickness (Morpho-MNIST's measure, in pixels)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from acc.generators.base import Generator, TargetRange
from acc.measure import measure_thickness, set_thickness


class ThicknessGenerator(Generator):
    """MNIST digits redrawn at a random stroke thickness; targets `thickness` (measured) and `thickness_target`."""

    class Params(TargetRange):
        low: float = Field(1.5, ge=0.5, le=8.0, description="thinnest stroke, pixels")
        high: float = Field(5.5, ge=0.5, le=8.0, description="thickest stroke, pixels")

    def generate(self, n, rng, params):
        digits, labels = self.mnist_sample(params.split, n, rng)
        target = rng.uniform(params.low, params.high, size=n)
        images = set_thickness(digits, target)
        # The measured value is the label: strokes that merge or fill a loop read thicker than drawn.
        targets = {"thickness": measure_thickness(images), "thickness_target": target.astype(np.float32)}
        return images, targets, labels
