"""The datasets of a workspace by name: "mnist" and "mnist_test" (MNIST's train and test splits,
`acc.mnist`), and any other name a generated `<name>.pt` file in the data folders."""

from __future__ import annotations

import re
from pathlib import Path

from acc.datasets import Dataset
from acc.mnist import load_mnist

NAME_RE = re.compile(r"[a-z0-9_-]+")
BUILTIN_NAMES = {"mnist": "train", "mnist_test": "test"}


def dataset_names(data_dirs: list[Path]) -> list[str]:
    """The names `load_dataset` accepts: "mnist", then the `<name>.pt` files in `data_dirs`, sorted."""
    found = {p.stem for d in data_dirs if Path(d).is_dir() for p in Path(d).glob("*.pt")}
    return ["mnist", *sorted(n for n in found if NAME_RE.fullmatch(n) and n not in BUILTIN_NAMES)]


def known_datasets(data_dirs: list[Path]) -> list[str]:
    """Every name `load_dataset` accepts: the built-in ones first, then the `<name>.pt` files."""
    mnist, *generated = dataset_names(data_dirs)
    return [mnist, "mnist_test", *generated]


def check_dataset_name(name: str) -> str:
    """`name` if it is a valid dataset name (it becomes a file name: no paths), else ValueError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > 64:
        raise ValueError(f"invalid dataset name {name!r}: use 1 to 64 lowercase letters, digits, '_' and '-'")
    return name


def dataset_path(name: str, data_dirs: list[Path]) -> Path | None:
    """`<dir>/<name>.pt` from the first of `data_dirs` that has it."""
    for folder in data_dirs:
        path = Path(folder) / f"{name}.pt"
        if path.is_file():
            return path
    return None


def load_dataset(name: str, data_dirs: list[Path], mnist_cache: Path | None = None) -> Dataset:
    """The dataset called `name`: "mnist" / "mnist_test", else `<dir>/<name>.pt` from the first dir that has it."""
    check_dataset_name(name)
    if name in BUILTIN_NAMES:
        return load_mnist(mnist_cache, BUILTIN_NAMES[name])
    path = dataset_path(name, data_dirs)
    if path is None:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(known_datasets(data_dirs))}")
    return Dataset.load(path, name=name)
