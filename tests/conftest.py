"""Shared fixtures: a workspace per test (sharing one parsed MNIST cache), tiny engine configs."""

from __future__ import annotations

import os

# Tests run tiny models next to trainer subprocesses on 2 cores: one intra-op thread per process
# avoids oversubscription, which slows torch down many times. Set before torch is imported, and
# inherited by the subprocesses the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest

from acc.engine import EngineConfig
from acc.engine.session import Session
from acc.workspace import Workspace

pytest_plugins = ["tests.server_fixtures"]

TINY_MODEL = {"name": "factor_slot", "factors": ["digit", "thickness", "slant", "style"],
              "slot_dim": 4, "channels": 16, "hidden": 16}


@pytest.fixture(scope="session")
def mnist_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mnist-cache")


@pytest.fixture
def workspace(tmp_path, mnist_cache) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "mnist").symlink_to(mnist_cache, target_is_directory=True)  # parse the MNIST CSV once per test run
    return Workspace.resolve(root)


@pytest.fixture
def tiny_config() -> EngineConfig:
    return EngineConfig(model=dict(TINY_MODEL), batch_size=32, lr=2e-3, eval_every=0, eval_samples=256,
                        device="cpu", seed=0)


@pytest.fixture
def session(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as s:
        yield s


def write_user_files(workspace: Workspace, kind: str, files: dict[str, str]) -> Path:
    """Put user files in the workspace's extra registry folder `user_<kind>` (declared in acc.toml)."""
    (workspace.root / "acc.toml").write_text(
        "[registry]\n" + "".join(f'{k} = ["user_{k}"]\n' for k in ("tasks", "generators", "recipes")))
    folder = workspace.root / f"user_{kind}"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def write_user_tasks(workspace: Workspace, files: dict[str, str]) -> Path:
    return write_user_files(workspace, "tasks", files)
