"""The held-out images every factoring evaluation sees, built from MNIST's test split only.

Three sets, each labelled with the Morpho-MNIST measurements of its images (`acc.measure`:
thickness, slant, area, length) and the digit class:
- `natural`: test digits as they are (the natural variation; what `MorphoMnist` labels);
- `thickness`: test digits redrawn at thicknesses drawn from [1.5, 5.5] px (`ThicknessGenerator`);
- `slant`: test digits sheared to slants drawn from [-0.6, 0.6] rad (`SlantGenerator`).

The generators are the built-in ones with fixed seeds and `split="test"`. The sets are built once
per workspace and cached in `<workspace>/evals/sets/`, outside the data folder, so that no task can
train on them by name and every evaluation of every checkpoint sees the same images. A cached set
whose recipe (sizes, seeds, parameters, the MNIST it came from) differs is built again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from acc.datasets import Dataset
from acc.generators.slant import SlantGenerator
from acc.generators.thickness import ThicknessGenerator
from acc.measure import measure_morphometry
from acc.mnist import load_mnist

SOURCES = ("natural", "thickness", "slant")
VERSION = 1  # of how the sets are made: a change rebuilds every cache


@dataclass(frozen=True)
class EvalSetsConfig:
    natural: int = 3000  # test digits as they are (at most all of them: 1,000 on the bundled fallback)
    generated: int = 1000  # images per generated set
    seed: int = 0
    thickness: tuple[float, float] = (1.5, 5.5)
    slant: tuple[float, float] = (-0.6, 0.6)


@dataclass
class EvalSets:
    """The sets by source name, and what made them (`info`, recorded with every report)."""
    sets: dict[str, Dataset]
    info: dict = field(default_factory=dict)

    def all(self) -> tuple[Dataset, np.ndarray]:
        """Every image of every set in one Dataset, and each image's source index into SOURCES."""
        parts = [self.sets[name] for name in SOURCES]
        keys = set.intersection(*(set(p.targets) for p in parts))
        merged = Dataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                         {k: torch.cat([p.targets[k] for p in parts]) for k in sorted(keys)},
                         {"sources": list(SOURCES)}, "factoring-eval")
        source = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
        return merged, source


def _spread(n: int, labels: np.ndarray) -> np.ndarray:
    """`n` indices taken round-robin over the classes (each class in its order): balanced, fixed."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [i for rank in range(max(map(len, by_class))) for idx in by_class if rank < len(idx)
             for i in [idx[rank]]]
    return np.sort(np.asarray(order[:n], dtype=np.int64))


def _labelled(images: np.ndarray, labels: np.ndarray, extra: dict[str, np.ndarray], meta: dict, name: str) -> Dataset:
    measured = measure_morphometry(images)
    targets = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in {**measured, **extra}.items()}
    return Dataset(torch.from_numpy(np.ascontiguousarray(images)).reshape(-1, 1, 28, 28),
                   torch.as_tensor(labels, dtype=torch.int64), targets, meta, name)


def _build(source: str, config: EvalSetsConfig, mnist_dir: Path | None, mnist_source: str) -> Dataset:
    rng = np.random.default_rng([config.seed, SOURCES.index(source)])
    meta = {"source": source, "mnist": mnist_source, "seed": config.seed}
    if source == "natural":
        test = load_mnist(mnist_dir, "test")
        labels = test.labels.numpy()
        pick = _spread(min(config.natural, len(test)), labels)
        return _labelled(test.images[pick, 0].numpy(), labels[pick], {}, meta, source)
    generator, (low, high) = ((ThicknessGenerator, config.thickness) if source == "thickness"
                              else (SlantGenerator, config.slant))
    params = generator.Params(low=low, high=high, split="test")
    images, targets, labels = generator(mnist_dir).generate(config.generated, rng, params)
    extra = {k: v for k, v in targets.items() if k.endswith("_target")}
    return _labelled(images, labels, extra, {**meta, "generator": generator.__name__,
                                             "params": params.model_dump(mode="json")}, source)


def evaluation_sets(folder: Path, mnist_dir: Path | None, config: EvalSetsConfig | None = None) -> EvalSets:
    """The three held-out sets, from the cache in `folder` when it was made the same way."""
    config = config or EvalSetsConfig()
    mnist_source = load_mnist(mnist_dir, "test").meta["source"]
    recipe = {"version": VERSION, "mnist": mnist_source, **{k: v for k, v in config.__dict__.items()}}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    sets = {}
    for source in SOURCES:
        path = folder / f"{source}-{key}.pt"
        if path.is_file():
            try:
                sets[source] = Dataset.load(path, source)
                continue
            except ValueError:  # a damaged cache is rebuilt, never trusted
                path.unlink()
        sets[source] = _build(source, config, mnist_dir, mnist_source)
        sets[source].save(path)
    return EvalSets(sets, {"key": key, **recipe, "sizes": {s: len(d) for s, d in sets.items()}})
