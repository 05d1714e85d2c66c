"""Where a training session keeps its files: the SQLite store, checkpoints, caches, extra folders.

A workspace is a folder (default `./workspace`, or `--workspace DIR`, or `ACC_WORKSPACE`). An
optional `acc.toml` in it adds user folders for the registries:

    [registry]
    tasks = ["~/my_tasks"]
    generators = []
    recipes = []

    [data]
    dir = "~/shared_datasets"   # where generated datasets live (default <workspace>/data/; ACC_DATA_DIR overrides)

A workspace owns its datasets: two workspaces share generated datasets only when a setting points
both at one folder on purpose.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REGISTRY_KINDS = ("tasks", "generators", "recipes")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, path: str | Path | None = None) -> "Workspace":
        """`path`, else `ACC_WORKSPACE`, else `./workspace`; created if missing."""
        chosen = path or os.environ.get("ACC_WORKSPACE") or "workspace"
        root = Path(chosen).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def db_path(self) -> Path:
        return self.root / "acc.sqlite"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def mnist_dir(self) -> Path:
        return self.root / "mnist"

    @property
    def data_dir(self) -> Path:
        """Where generated datasets are written and read: `ACC_DATA_DIR`, else `[data] dir` in
        acc.toml (relative to the workspace), else `<workspace>/data/` (DESIGN §2). Created if missing."""
        if os.environ.get("ACC_DATA_DIR"):
            folder = Path(os.environ["ACC_DATA_DIR"]).expanduser().resolve()
        elif self.config().get("data", {}).get("dir"):
            folder = (self.root / Path(self.config()["data"]["dir"]).expanduser()).resolve()
        else:
            folder = self.root / "data"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def data_dirs(self) -> list[Path]:
        """Folders searched for `<name>.pt` datasets: only `data_dir`, never the package's folder or
        another workspace's (a list, for `acc.datasets`' lookups)."""
        return [self.data_dir]

    @property
    def evals_dir(self) -> Path:
        """Factoring evaluations: the held-out sets, the fixed digit classifier, figures per checkpoint."""
        return self.root / "evals"

    @property
    def autosaves_dir(self) -> Path:
        return self.root / "autosaves"

    @property
    def locks_dir(self) -> Path:
        """Lock files of the runs that a live trainer holds open (see `acc.engine.runs`)."""
        return self.root / "locks"

    def config(self) -> dict:
        path = self.root / "acc.toml"
        if not path.exists():
            return {}
        with path.open("rb") as f:
            return tomllib.load(f)

    def registry_folders(self, kind: str) -> list[Path]:
        """The built-in folder `acc/<kind>/` first, then the extra folders named in `acc.toml`."""
        if kind not in REGISTRY_KINDS:
            raise ValueError(f"unknown registry kind {kind!r}; expected one of {REGISTRY_KINDS}")
        extra = self.config().get("registry", {}).get(kind, [])
        folders = [PACKAGE_DIR / kind]
        for entry in extra:
            folder = Path(entry).expanduser()
            folders.append(folder if folder.is_absolute() else (self.root / folder).resolve())
        return folders
