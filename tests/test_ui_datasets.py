"""The datasets panel (M3) through NiceGUI's simulated user, against a real trainer with a user
generator; what the page did is checked on the trainer (`TrainerClient.datasets`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from nicegui import ElementFilter, ui
from nicegui.testing.user import User

from acc.ui.client import TrainerClient
from acc.ui.datasets import NAME_RULE, common_range, histogram_options, name_problem, suggested_name, target_series
from tests.conftest import write_user_files
from tests.server_fixtures import LiveTrainer
from tests.test_ui import WAIT_S, dashboard, eventually, no_error_logs  # noqa: F401 (an autouse fixture)

SYMMETRY_GENERATOR = '''
import numpy as np
from pydantic import BaseModel, Field
from acc.generators.base import Generator

class SymmetryGenerator(Generator):
    """Mirror-symmetric blobs; target `symmetry` in [0, 1], the share of cells equal to their mirror image."""
    class Params(BaseModel):
        noise: float = Field(0.1, ge=0, le=1)
    def generate(self, n, rng, params):
        left = rng.random((n, 7, 4)) < 0.45
        mirrored = left[:, :, 2::-1]
        level = rng.uniform(0, 1, (n, 1, 1))
        right = np.where(rng.random((n, 7, 3)) < level, mirrored, rng.random((n, 7, 3)) < 0.45)
        symmetry = (right == mirrored).mean(axis=(1, 2))
        pixels = np.concatenate([left, right], axis=2).repeat(4, axis=1).repeat(4, axis=2) * 255.0
        pixels += rng.normal(0, params.noise * 255, pixels.shape)
        return pixels.clip(0, 255).astype(np.uint8), {"symmetry": symmetry}
'''
N = 200


def dataset_names(client: TrainerClient) -> set[str]:
    return {d["name"] for d in client.datasets()}


def generate(trainer: LiveTrainer, name: str, **kwargs) -> None:
    """Generate through the API and wait for the job to finish."""
    with TrainerClient(trainer.base_url) as client:
        job = client.generate_dataset("SymmetryGenerator", name, N, **kwargs)
    assert trainer.session.jobs.wait(job["id"], WAIT_S).status == "done"


def shown(user: User, marker: str, within: str | None = None) -> list[ui.element]:
    """The page's elements with `marker` (inside the element marked `within`), looked up afresh:
    the panel redraws its rows."""
    with user.client:
        found = ElementFilter(marker=marker, local_scope=False)
        return list(found.within(marker=within) if within else found)


async def until(check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll a check of the page, on the event loop, until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"still false after {timeout} s"
        await asyncio.sleep(0.1)
    return result


def row_status(user: User, name: str) -> str | None:
    return next((label.text for label in shown(user, "dataset-status", within=f"dataset:{name}")), None)


def grids(user: User) -> dict[str, str]:
    """{dataset: image source} of the sample grids shown."""
    return {image.props["data-grid"]: image.source for image in shown(user, "dataset-grid")}


def histogram(user: User, target: str) -> ui.echart | None:
    return next((c for c in shown(user, "dataset-histogram") if c.props["data-target"] == target), None)


async def delete(user: User, name: str) -> None:
    """Press the row's delete button and confirm."""
    with user.scope(marker=f"dataset:{name}"):
        user.find(marker="delete-dataset").click()
    await until(lambda: shown(user, "delete-dataset-dialog")[0].value)  # open: waiting for the answer
    user.find(marker="confirm-delete").click()


# ---- pure logic ------------------------------------------------------------------------------------
def test_names_and_suggestions():
    assert name_problem("sym_a-1") is None
    assert NAME_RULE in name_problem("Bad Name") and name_problem("") and name_problem("x" * 65)
    assert suggested_name("SymmetryGenerator") == "symmetry"
    assert suggested_name("DigitSlantGenerator") == "digit_slant"


def test_two_datasets_share_bins_and_overlay_only_common_targets():
    a = {"targets": {"t": {"min": 0.2, "max": 0.9, "edges": [0, 1, 2], "counts": [1, 3], "mean": 1, "std": 0}},
         "classes": [0] * 10}
    b = {"targets": {"t": {"min": 0.0, "max": 0.5, "edges": [0, 1, 2], "counts": [2, 2], "mean": 1, "std": 0},
                     "u": {"min": 1.0, "max": 1.0, "edges": [0, 1], "counts": [4], "mean": 1, "std": 0}},
         "classes": [0] * 10}
    assert common_range(a["targets"]["t"], b["targets"]["t"]) == (0.0, 0.9)
    lo, hi = common_range(b["targets"]["u"], b["targets"]["u"])
    assert hi > lo == 1.0  # a constant target still gets a range the API accepts
    series = target_series(["a", "b"], [a, b])
    assert [(t, [name for name, _ in s]) for t, s in series] == [("t", ["a", "b"]), ("u", ["b"])]
    overlaid = histogram_options("t", series[0][1], {"a": "red", "b": "blue"})
    assert [s["data"] for s in overlaid["series"]] == [[0.25, 0.75], [0.5, 0.5]]  # shares: sizes may differ
    assert "a: mean 1" in overlaid["title"]["subtext"] and "b: mean 1" in overlaid["title"]["subtext"]
    alone = histogram_options("u", series[1][1], {"a": "red", "b": "blue"})
    assert alone["series"][0]["data"] == [4] and alone["series"][0]["color"] == "blue"  # counts, b's colour


# ---- the page against a real trainer ----------------------------------------------------------------
@pytest.mark.asyncio
async def test_generate_dialog_follows_the_registry_checks_the_name_and_generates(workspace, trainer_factory):
    folder = write_user_files(workspace, "generators", {})  # watched from the start, empty
    trainer = trainer_factory()
    with TrainerClient(trainer.base_url) as client:
        before = dataset_names(client)
        async with dashboard(trainer.base_url) as user:
            await user.should_see(marker="dataset:mnist", retries=100)
            user.find(marker="open-add-dataset").click()
            generator = user.find(marker="dataset-generator").elements.pop()
            (folder / "symmetry.py").write_text(SYMMETRY_GENERATOR)
            await eventually(lambda: "SymmetryGenerator" in generator.options)  # the registry event did it
            generator.set_value("SymmetryGenerator")
            await user.should_see("Mirror-symmetric blobs")
            await user.should_see(marker="param:noise")
            assert user.find(marker="dataset-name").elements.pop().value == "symmetry"  # suggested
            user.find(marker="dataset-n").clear().type(str(N))

            user.find(marker="dataset-name").clear().type("Bad Name")
            user.find(marker="generate-dataset").click()
            await user.should_see(NAME_RULE)
            assert dataset_names(client) == before  # nothing was sent

            user.find(marker="dataset-name").clear().type("sym_a")
            user.find(marker="generate-dataset").click()
            await eventually(lambda: "sym_a" in dataset_names(client) and client.dataset("sym_a")["status"] == "ready")
            assert client.dataset("sym_a")["n"] == N and client.dataset("sym_a")["targets"] == ["symmetry"]
            await until(lambda: row_status(user, "sym_a") == "ready")

            user.find(marker="open-add-dataset").click()  # the name is taken now: the API's 409 is shown
            user.find(marker="generate-dataset").click()
            await user.should_see("already exists")


@pytest.mark.asyncio
async def test_view_shows_a_grid_and_histograms_and_compares_two_datasets(workspace, trainer_factory):
    write_user_files(workspace, "generators", {"symmetry.py": SYMMETRY_GENERATOR})
    trainer = trainer_factory()
    generate(trainer, "sym_a")
    generate(trainer, "sym_b", seed=1, params={"noise": 0.5})
    async with dashboard(trainer.base_url) as user:
        await user.should_see(marker="dataset:sym_b", retries=100)
        user.find("sym_a").click()  # the row's name
        await until(lambda: list(grids(user)) == ["sym_a"])
        assert grids(user)["sym_a"].startswith("data:image/png;base64,")
        alone = await until(lambda: histogram(user, "symmetry"))
        assert len(alone.options["series"]) == 1 and "sym_a: mean" in alone.options["title"]["subtext"]

        user.find(marker="dataset-compare").elements.pop().set_value("sym_b")
        await until(lambda: sorted(grids(user)) == ["sym_a", "sym_b"])
        assert all(source.startswith("data:image/png;base64,") for source in grids(user).values())
        overlaid = await until(lambda: (chart := histogram(user, "symmetry")) and len(chart.options["series"]) == 2
                               and chart)
        assert [s["name"] for s in overlaid.options["series"]] == ["sym_a", "sym_b"]
        assert all(len(s["data"]) == len(overlaid.options["xAxis"]["data"]) for s in overlaid.options["series"])

        with TrainerClient(trainer.base_url) as client:
            client.add_task("RegressionTask", name="symmetry", dataset="sym_b", params={"target": "symmetry"})
            await delete(user, "sym_b")
            await user.should_see("used by a task", retries=100)  # the API's 409, and nothing else happens
            await delete(user, "sym_a")
            await eventually(lambda: "sym_a" not in dataset_names(client))
            assert "sym_b" in dataset_names(client)
        await until(lambda: not shown(user, "dataset:sym_a") and list(grids(user)) == [])  # its view went too
