"""The Generator base class: a synthetic dataset with known factors (DESIGN §3).

    class SymmetryGenerator(Generator):
        \"\"\"Mirror-symmetric blobs; target `symmetry` in [0, 1].\"\"\"
        class Params(BaseModel):
            noise: float = Field(0.1, ge=0, le=1)
        def generate(self, n, rng, params):
            ...  # returns images uint8 [n, 28, 28] and {target name: float array [n]}

`Params` (pydantic) gives the dashboard its form and the API its validation. `generate` may also
return digit labels as a third item (int [n]: a digit class 0..9, or -1 where there is none); every
subclass's `generate` is wrapped so that other labels are a ValueError naming the generator, before
anything is saved. A generator that transforms real digits reads them with `self.mnist()`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from acc.mnist import load_mnist


@functools.lru_cache(maxsize=4)
def _mnist(mnist_dir: Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = load_mnist(mnist_dir, split)
    images, labels = data.images[:, 0].numpy(), data.labels.numpy()
    images.flags.writeable = labels.flags.writeable = False  # shared by every generator: never edited in place
    return images, labels


NO_LABEL = -1
NUM_CLASSES = 10  # digit labels are 0..9


def check_labels(labels: Any, n: int, who: str) -> np.ndarray:
    """`labels` as int64 [n] if each is -1 (no label) or a digit 0..9 (as integers, or floats that are
    whole numbers); else a ValueError naming `who`, the first bad label and where it is."""
    array = np.asarray(labels)
    if array.shape != (n,):
        raise ValueError(f"{who}: labels must be {n} integers (-1 or 0..9), got shape {list(array.shape)}")
    floats = array.dtype.kind == "f"
    whole = array.dtype.kind in "iu" or (floats and bool(np.all(np.isfinite(array) & (array == np.round(array)))))
    if not whole:  # 3.0 is the digit 3; 3.5, NaN, True and strings are no digit
        raise ValueError(f"{who}: labels must be integers (-1 for none, or a digit 0..9), got {array.dtype} values"
                         + (" that are not whole numbers" if floats else ""))
    bad = np.flatnonzero((array < NO_LABEL) | (array >= NUM_CLASSES))
    if bad.size:
        raise ValueError(f"{who}: labels must be -1 (none) or a digit 0..9, got {array[bad[0]]} at index {bad[0]}"
                         + (f" (and {bad.size - 1} more)" if bad.size > 1 else ""))
    return array.astype(np.int64)


def _checking_labels(generate: Any) -> Any:
    @functools.wraps(generate)
    def checked(self: Generator, n: int, rng: np.random.Generator, params: BaseModel) -> Any:
        result = generate(self, n, rng, params)
        if isinstance(result, tuple) and len(result) == 3:
            result = (*result[:2], check_labels(result[2], n, type(self).__name__))
        return result
    checked.checks_labels = True
    return checked


class Generator:
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)  # `true` is no number

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        generate = cls.__dict__.get("generate")
        if callable(generate) and not getattr(generate, "checks_labels", False):
            cls.generate = _checking_labels(generate)

    def __init__(self, mnist_dir: Path | None = None) -> None:
        self.mnist_dir = mnist_dir  # where MNIST's IDX files are cached (the workspace's)

    def generate(self, n: int, rng: np.random.Generator, params: BaseModel
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]] | tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} must implement generate(n, rng, params)")

    def mnist(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """Real MNIST digits: images uint8 [N, 28, 28] and labels int64 [N] (see `load_mnist`);
        read once per process, since a dataset is generated in many chunks."""
        return _mnist(self.mnist_dir, split)

    def mnist_sample(self, split: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`n` real MNIST digits drawn at random (with replacement) and their labels."""
        digits, labels = self.mnist(split)
        pick = rng.integers(len(digits), size=n)
        return digits[pick], labels[pick]

    @classmethod
    def params_schema(cls) -> dict:
        return {"schema": cls.Params.model_json_schema()}


class TargetRange(Generator.Params):
    """Parameters of a generator that transforms MNIST digits (`split`) to a target drawn uniformly
    from [low, high]; a subclass redeclares `low` and `high` with its own defaults and bounds."""

    low: float
    high: float
    split: Literal["train", "test"] = "train"

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be greater than high ({self.high})")
        return self
