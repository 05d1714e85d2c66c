"""Datasets over real HTTP and in the catalog: generation as a job, listing, pictures, histograms,
bad requests that change nothing, failing generators that leave nothing half-written, recipes
that generate what they train on, and tasks bound to generated datasets."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from acc.datasets import Dataset
from acc.engine.datasets import DatasetCatalog, DatasetExists
from acc.engine.recipes import run_recipe
from acc.engine.session import Session
from acc.test_m3 import SYMMETRY_GENERATOR
from acc.workspace import Workspace
from tests.conftest import write_user_files

BROKEN_GENERATORS = '''
import threading
import numpy as np
from acc.generators.base import Generator


class Raising(Generator):
    """Fails on its second chunk."""
    def generate(self, n, rng, params):
        if getattr(self, "called", False):
            raise RuntimeError("the generator broke here")
        self.called = True
        return np.zeros((n, 28, 28), np.uint8), {"x": np.zeros(n)}


class FloatImages(Generator):
    """Returns float images: not the format."""
    def generate(self, n, rng, params):
        return np.zeros((n, 28, 28)), {"x": np.zeros(n)}


class Unlabelled(Generator):
    """Targets but no digit labels."""
    def generate(self, n, rng, params):
        return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), {"x": rng.random(n)}


class Gated(Generator):
    """Each chunk waits for the test to open the gate."""
    gate = threading.Event()
    def generate(self, n, rng, params):
        assert self.gate.wait(30)
        return np.full((n, 28, 28), 255, np.uint8), {"x": rng.random(n)}
'''


@pytest.fixture
def trainer(workspace, trainer_factory):
    write_user_files(workspace, "generators", {"symmetry_gen.py": SYMMETRY_GENERATOR,
                                               "broken.py": BROKEN_GENERATORS})
    return trainer_factory()


def generate(trainer, http, name: str, n: int = 600, generator: str = "SymmetryGenerator", **body):
    """POST a generation and wait for its job; the finished job."""
    response = http.post("/api/datasets", json={"generator": generator, "name": name, "n": n, **body})
    assert response.status_code == 202, response.text
    return trainer.session.jobs.wait(response.json()["id"], 120).public()


def test_generate_then_list_describe_grid_and_histograms(trainer, generated_data_dir, sse):
    with trainer.client() as http, sse(trainer) as events:
        events.wait_for("hello")
        job = generate(trainer, http, "sym", n=1200, seed=3, params={"noise": 0.2})
        assert job["status"] == "done" and job["kind"] == "dataset" and job["progress"] == 1.0, job
        progress = []  # three chunks of at most 500 images: progress on the stream after each
        while not progress or progress[-1] < 1.0:
            progress.append(events.wait_for("job", lambda j: j["id"] == job["id"] and j["progress"] > 0)["progress"])
        assert progress == pytest.approx([500 / 1200, 1000 / 1200, 1.0, 1.0][:len(progress)]) and len(progress) >= 3
        assert (generated_data_dir / "sym.pt").is_file()

        listed = {d["name"]: d for d in http.get("/api/datasets").json()}
        assert listed["mnist"]["builtin"] and listed["mnist"]["status"] == "ready"
        info = http.get("/api/datasets/sym").json()
        assert info == listed["sym"]
        assert (info["n"], info["status"], info["generator"], info["seed"]) == (1200, "ready", "SymmetryGenerator", 3)
        assert info["params"] == {"noise": 0.2} and info["targets"] == ["symmetry"]
        assert trainer.session.store.dataset("sym")["status"] == "ready"

        response = http.get("/api/datasets/sym/grid.png", params={"n": 16, "columns": 4, "sort": True})
        assert response.headers["content-type"] == "image/png"
        grid = np.asarray(Image.open(io.BytesIO(response.content)))
        assert grid.shape[1] < grid.shape[0] < grid.shape[1] * 1.5 and grid.std() > 20  # 4x4 captioned, not blank
        assert http.get("/api/datasets/mnist/grid.png", params={"n": 4}).status_code == 200

        hist = http.get("/api/datasets/sym/histograms", params={"bins": 7}).json()
        symmetry = hist["targets"]["symmetry"]
        assert hist["n"] == 1200 and sum(symmetry["counts"]) == 1200 and len(symmetry["edges"]) == 8
        values = Dataset.load(generated_data_dir / "sym.pt").targets["symmetry"].double()
        assert symmetry["mean"] == pytest.approx(float(values.mean())) and symmetry["max"] <= 1.0
        assert info["ranges"]["symmetry"] == pytest.approx([symmetry["min"], symmetry["max"]])
        shared = http.get("/api/datasets/sym/histograms", params={"bins": 4, "lo": 0, "hi": 2}).json()
        assert shared["targets"]["symmetry"]["edges"] == [0.0, 0.5, 1.0, 1.5, 2.0]
        assert sum(http.get("/api/datasets/mnist/histograms").json()["classes"]) == listed["mnist"]["n"]


def test_a_dataset_without_labels_has_no_class_counts_and_is_readable_by_all(trainer, generated_data_dir):
    with trainer.client() as http:
        assert generate(trainer, http, "plain", n=20, generator="Unlabelled")["status"] == "done"
        assert http.get("/api/datasets/plain").json()["classes"] == []
        assert http.get("/api/datasets/plain/histograms").json()["classes"] == []
        assert len(http.get("/api/datasets/mnist/histograms").json()["classes"]) == 10
    assert (generated_data_dir / "plain.pt").stat().st_mode & 0o777 == 0o644


def test_bad_requests_are_refused_and_change_nothing(trainer, generated_data_dir):
    with trainer.client() as http:
        assert generate(trainer, http, "taken", n=50)["status"] == "done"
        before = http.get("/api/datasets").json()
        cases = [
            ({"generator": "SymmetryGenerator", "name": "x", "n": 10, "params": {"noise": 5}}, 422, "noise"),
            ({"generator": "SymmetryGenerator", "name": "x", "n": 10, "params": {"nope": 1}}, 422, "nope"),
            ({"generator": "SymmetryGenerator", "name": "../etc", "n": 10}, 422, "name"),
            ({"generator": "SymmetryGenerator", "name": "Upper", "n": 10}, 422, "name"),
            ({"generator": "SymmetryGenerator", "name": "x", "n": 0}, 422, "n"),
            ({"generator": "NoSuchGenerator", "name": "x", "n": 10}, 404, "NoSuchGenerator"),
            ({"generator": "SymmetryGenerator", "name": "taken", "n": 10}, 409, "already exists"),
            ({"generator": "SymmetryGenerator", "name": "mnist", "n": 10}, 409, "already exists"),
        ]
        for body, code, words in cases:
            response = http.post("/api/datasets", json=body)
            assert response.status_code == code and words in response.json()["detail"], (body, response.text)
        assert http.get("/api/datasets/nothing-here").status_code == 404
        assert http.get("/api/datasets/..%2Fetc").status_code in (404, 422)
        assert http.get("/api/datasets/taken/grid.png", params={"target": "nope"}).status_code == 404
        assert http.get("/api/datasets/taken/histograms", params={"lo": 1, "hi": 0}).status_code == 422
        assert http.delete("/api/datasets/mnist").status_code == 422
        assert http.get("/api/datasets").json() == before
        assert sorted(p.name for p in generated_data_dir.iterdir()) == ["taken.pt"]


def test_failing_generators_end_their_job_with_the_error_and_leave_no_file(trainer, generated_data_dir):
    with trainer.client() as http:
        raised = generate(trainer, http, "raising", n=1200, generator="Raising")
        assert raised["status"] == "failed" and "the generator broke here" in raised["error"]
        assert "broken.py" in raised["error"]  # where, for the researcher
        floats = generate(trainer, http, "floats", n=10, generator="FloatImages")
        assert floats["status"] == "failed" and "expected uint8 [10, 28, 28]" in floats["error"]
        assert not list(generated_data_dir.glob("*.pt")) and not list(generated_data_dir.glob("*.tmp*"))
        rows = {d["name"]: d for d in http.get("/api/datasets").json()}
        assert rows["raising"]["status"] == "failed" and "broke here" in rows["raising"]["error"]
        assert http.get("/api/health").json()["ok"]
        assert generate(trainer, http, "raising", n=20)["status"] == "done"  # a failed name can be reused


def test_generation_runs_beside_training_and_can_be_cancelled(trainer, generated_data_dir):
    gated = trainer.session.generators.get("Gated")
    with trainer.client() as http:
        http.post("/api/train", json={"action": "start"})
        job = http.post("/api/datasets", json={"generator": "Gated", "name": "gated", "n": 1500}).json()
        assert http.get("/api/datasets/gated").json()["status"] == "generating"  # listed as soon as accepted
        assert http.post("/api/datasets", json={"generator": "Gated", "name": "gated", "n": 5}).status_code == 409
        assert http.get("/api/state").json()["status"] == "running"  # not a job that owns the engine
        assert http.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
        gated.gate.set()
        final = trainer.session.jobs.wait(job["id"], 60)
        assert final.status == "cancelled"
        assert not list(generated_data_dir.glob("*"))
        assert http.get("/api/datasets/gated").json()["status"] == "cancelled"
        http.post("/api/train", json={"action": "stop"})


def test_delete_refuses_a_dataset_in_use(trainer, generated_data_dir, sse):
    with trainer.client() as http, sse(trainer) as events:
        events.wait_for("hello")
        generate(trainer, http, "used", n=100)
        assert events.wait_for("dataset", lambda d: d["name"] == "used" and d["status"] == "ready")
        task = {"type": "RegressionTask", "name": "sym", "dataset": "used", "params": {"target": "symmetry"}}
        assert http.post("/api/tasks", json=task).status_code == 201
        refused = http.delete("/api/datasets/used")
        assert refused.status_code == 409 and "remove the task first" in refused.json()["detail"]
        assert http.delete("/api/tasks/sym").status_code == 204
        assert http.delete("/api/datasets/used").status_code == 204
        assert not (generated_data_dir / "used.pt").exists()
        assert events.wait_for("dataset", lambda d: d["status"] == "deleted")["name"] == "used"
        assert http.get("/api/datasets/used").status_code == 404


def test_generation_is_deterministic_by_seed(workspace, tiny_config):
    write_user_files(workspace, "generators", {"symmetry_gen.py": SYMMETRY_GENERATOR})
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        catalog = session.datasets
        for name, seed in (("a", 1), ("b", 1), ("c", 2)):
            catalog.generate("SymmetryGenerator", name, 700, seed)  # two chunks
        a, b, c = (catalog.load(name) for name in "abc")
        assert torch.equal(a.images, b.images) and torch.equal(a.targets["symmetry"], b.targets["symmetry"])
        assert not torch.equal(a.images, c.images)
        with pytest.raises(DatasetExists):
            catalog.generate("SymmetryGenerator", "a", 10, 1)


def test_a_generation_cut_short_by_a_dead_trainer_is_marked_failed(session):
    session.store.put_dataset("half", status="generating", generator="G", params={}, seed=0, n=10)
    DatasetCatalog(session.workspace, session.store, session.generators)
    row = session.store.dataset("half")
    assert row["status"] == "failed" and "interrupted" in row["error"]


RECIPE = '''
from acc.recipes.base import Recipe


class SymmetryProbe(Recipe):
    """Generates its dataset, then trains a probe on it beside reconstruction on MNIST."""
    def run(self, r):
        data = r.dataset("sym_recipe", generator="SymmetryGenerator", n=300, seed=5, noise=0.05)
        r.model("factor_slot", factors=["digit", "thickness", "slant", "style"], slot_dim=4, channels=16, hidden=16)
        r.add_task("ReconstructionTask")
        r.add_task("RegressionTask", name="symmetry", latent="style", dataset=data, target="symmetry")
        r.train(steps=10)
        self.results = r.evaluate()
        r.checkpoint("probe")


class Mismatch(Recipe):
    """Asks for the same dataset made another way."""
    def run(self, r):
        r.dataset("sym_recipe", generator="SymmetryGenerator", n=300, seed=5, noise=0.5)
'''


def test_a_recipe_generates_its_dataset_and_trains_a_task_bound_to_it(workspace, tiny_config):
    write_user_files(workspace, "generators", {"symmetry_gen.py": SYMMETRY_GENERATOR})
    write_user_files(workspace, "recipes", {"probe.py": RECIPE})
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        run_recipe(session.engine, session.recipes, "SymmetryProbe", datasets=session.datasets)
        info = session.datasets.describe("sym_recipe")
        assert (info["n"], info["seed"], info["params"]) == (300, 5, {"noise": 0.05})
        session.store.flush()
        evaluation = session.store.evals(session.engine.run_id)[0]["results"]
        assert {"mae", "r2"} <= set(evaluation["symmetry"]) and "psnr" in evaluation["reconstruction_task"]
        keys = session.store.metric_keys(session.engine.run_id)
        assert {"loss/symmetry", "loss/reconstruction_task"} <= set(keys)
        mtime = session.datasets.path_of("sym_recipe").stat().st_mtime
        run_recipe(session.engine, session.recipes, "SymmetryProbe", datasets=session.datasets)
        assert session.datasets.path_of("sym_recipe").stat().st_mtime == mtime  # reused, not regenerated
        with pytest.raises(ValueError, match="differs in params"):
            run_recipe(session.engine, session.recipes, "Mismatch", datasets=session.datasets)


def test_a_regression_task_trains_on_a_generated_thickness_dataset_beside_mnist(session):
    session.datasets.generate("ThicknessGenerator", "thickness_small", 300, seed=1)
    engine = session.engine
    engine.add_task("ReconstructionTask")
    engine.add_task("RegressionTask", name="thickness", dataset="thickness_small", latent="thickness",
                    target="thickness")
    engine.train(4)
    assert set(engine.data) == {"mnist", "thickness_small"}  # one batch from each dataset per step
    results = engine.evaluate()
    assert {"mae", "r2"} <= set(results["thickness"]) and results["thickness"]["mae"] > 0
    assert "psnr" in results["reconstruction_task"]


def test_a_workspace_owns_its_datasets_unless_told_to_share(tmp_path, mnist_cache, tiny_config, monkeypatch):
    """Datasets went to the source tree's acc/data/ whatever the workspace: one trainer listed, and
    could delete, another's."""
    monkeypatch.delenv("ACC_DATA_DIR")
    roots = []
    for name in ("one", "two"):
        root = tmp_path / name
        root.mkdir()
        (root / "mnist").symlink_to(mnist_cache, target_is_directory=True)
        write_user_files(Workspace(root), "generators", {"symmetry_gen.py": SYMMETRY_GENERATOR})
        roots.append(root)
    with Session.open(roots[0], tiny_config, watch=False) as one, Session.open(roots[1], tiny_config, watch=False) as two:
        one.datasets.generate("SymmetryGenerator", "mine", 20, 0)
        assert one.datasets.path_of("mine") == roots[0] / "data" / "mine.pt"
        assert "mine" in [d["name"] for d in one.datasets.list()]
        assert "mine" not in [d["name"] for d in two.datasets.list()]
        with pytest.raises(KeyError):
            two.datasets.delete("mine", in_use=set())
        assert (roots[0] / "data" / "mine.pt").exists()

    shared = tmp_path / "shared"
    for root in roots:  # on purpose: both name one folder
        with (root / "acc.toml").open("a") as f:
            f.write(f'\n[data]\ndir = "{shared}"\n')
    with Session.open(roots[0], tiny_config, watch=False) as one, Session.open(roots[1], tiny_config, watch=False) as two:
        one.datasets.generate("SymmetryGenerator", "common", 20, 0)
        assert "common" in [d["name"] for d in two.datasets.list()]
        assert two.datasets.path_of("common") == shared / "common.pt"
