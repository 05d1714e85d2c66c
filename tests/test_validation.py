"""Input the API once took and should not have: names that URLs cannot address, booleans taken for
numbers, histogram ranges numpy cannot bin, digit labels no digit has. Each is refused with a reason
and changes nothing, over real HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from acc.generators.base import Generator, check_labels
from acc.test_m3 import SYMMETRY_GENERATOR
from tests.conftest import write_user_files

BAD_LABELS = '''
import numpy as np
from acc.generators.base import Generator


class FortyTwo(Generator):
    """Labels every image 42: no digit."""
    def generate(self, n, rng, params):
        return np.zeros((n, 28, 28), np.uint8), {"x": rng.random(n)}, np.full(n, 42)
'''


@pytest.fixture
def trainer(workspace, trainer_factory):
    write_user_files(workspace, "generators", {"symmetry_gen.py": SYMMETRY_GENERATOR, "bad_labels.py": BAD_LABELS})
    return trainer_factory()


def generate(trainer, http, name: str, generator: str = "SymmetryGenerator", n: int = 300) -> dict:
    response = http.post("/api/datasets", json={"generator": generator, "name": name, "n": n})
    assert response.status_code == 202, response.text
    return trainer.session.jobs.wait(response.json()["id"], 120).public()


def refused(response, status: int = 422) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


# ---- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [".", "..", "_", "-", "...", "_.-"])
def test_a_name_needs_a_letter_or_digit(live_trainer, name):
    with live_trainer.client() as http:
        before = http.get("/api/state").json()
        assert "name" in refused(http.post("/api/tasks", json={"type": "ClassificationTask", "name": name}))
        refused(http.post("/api/checkpoints", json={"name": name}))
        assert http.get("/api/state").json() == before
        assert http.get("/api/checkpoints").json() == []
        # What is still a name: any of those characters around at least one letter or digit.
        named = f"{name}a{name}"
        created = http.post("/api/tasks", json={"type": "ClassificationTask", "name": named})
        assert created.status_code == 201, created.text
        assert http.patch(f"/api/tasks/{named}", json={"weight": 2}).json()["weight"] == 2
        assert http.delete(f"/api/tasks/{named}").status_code == 204


def test_names_stay_at_most_64_characters(live_trainer):
    with live_trainer.client() as http:
        refused(http.post("/api/tasks", json={"type": "ClassificationTask", "name": "-" * 64 + "a"}))
        refused(http.post("/api/tasks", json={"type": "ClassificationTask", "name": "a" * 65}))
        assert http.post("/api/tasks", json={"type": "ClassificationTask", "name": "-" * 63 + "a"}).status_code == 201


# ---- strict types --------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path, body", [
    ("PUT", "/api/lr", {"lr": True}),
    ("PUT", "/api/lr", {"lr": "0.1"}),
    ("PATCH", "/api/tasks/reconstruction_task", {"weight": True}),
    ("PATCH", "/api/tasks/reconstruction_task", {"enabled": 0}),
    ("PATCH", "/api/tasks/reconstruction_task", {"enabled": "false"}),
    ("POST", "/api/train", {"action": "start", "steps": True}),
    ("POST", "/api/train", {"action": "start", "steps": 2.5}),
    ("POST", "/api/train", {"action": "start", "steps": "2"}),
    ("POST", "/api/tasks", {"type": "ClassificationTask", "weight": False}),
    ("POST", "/api/datasets", {"generator": "ThicknessGenerator", "name": "d", "n": True}),
    ("POST", "/api/datasets", {"generator": "ThicknessGenerator", "name": "d", "n": 10, "seed": 1.5}),
    ("POST", "/api/datasets", {"generator": "ThicknessGenerator", "name": "d", "n": 10, "seed": "1"}),
])
def test_booleans_and_strings_are_no_numbers(live_trainer, method, path, body):
    with live_trainer.client() as http:
        before = http.get("/api/state").json(), http.get("/api/datasets").json()
        refused(http.request(method, path, json=body))
        assert (http.get("/api/state").json(), http.get("/api/datasets").json()) == before


def test_numbers_still_are(live_trainer):
    with live_trainer.client() as http:
        assert http.put("/api/lr", json={"lr": 1}).json()["lr"] == 1.0  # an integer is a number
        assert http.put("/api/lr", json={"lr": 0.01}).json()["lr"] == 0.01
        assert http.patch("/api/tasks/reconstruction_task", json={"weight": 2, "enabled": False}).status_code == 200
        # JSON Schema's integers include 2.0 (what a client that only has floats sends).
        assert http.post("/api/train", json={"action": "start", "steps": 2.0}).status_code == 200


def test_generator_parameters_are_strict_too(trainer):
    with trainer.client() as http:
        before = http.get("/api/datasets").json()
        body = {"generator": "ThicknessGenerator", "name": "t", "n": 10, "params": {"low": True}}
        assert "low" in refused(http.post("/api/datasets", json=body))
        assert http.get("/api/datasets").json() == before


# ---- histograms ----------------------------------------------------------------------------------
def test_histogram_ranges_numpy_cannot_bin_are_refused_or_widened(trainer):
    with trainer.client() as http:
        assert generate(trainer, http, "sym")["status"] == "done"
        before = http.get("/api/datasets/sym").json()
        url = "/api/datasets/sym/histograms"
        for params in ({"bins": 50, "lo": 1e17}, {"bins": 50, "hi": -1e17}, {"lo": 2, "target": "symmetry"}):
            detail = refused(http.get(url, params=params))
            assert "symmetry" in detail and "lo and hi" in detail, detail
        refused(http.get(url, params={"lo": 1e39, "hi": 2e39}))  # past float32, which targets are
        refused(http.get(url, params={"lo": -1e300}))
        # A range too narrow for distinct edges at its magnitude is widened, as a constant target is.
        for lo, width in ((1e15, 0.25), (1e7, 1e-9), (0.5, 0.0)):
            params = {"bins": 200, "lo": lo} | ({"hi": lo + width} if width else {})
            response = http.get(url, params=params)
            assert response.status_code == 200, (params, response.text)
            edges = response.json()["targets"]["symmetry"]["edges"]
            assert len(edges) == 201 and all(a < b for a, b in zip(edges, edges[1:])), params
        assert http.get("/api/datasets/sym").json() == before


# ---- generator labels ----------------------------------------------------------------------------
def test_a_label_that_is_no_digit_fails_the_generation_naming_the_generator(trainer, generated_data_dir):
    with trainer.client() as http:
        job = generate(trainer, http, "bad", generator="FortyTwo")
        assert job["status"] == "failed"
        assert "FortyTwo" in job["error"] and "42" in job["error"] and "0..9" in job["error"], job["error"]
        assert not (generated_data_dir / "bad.pt").exists()
        assert http.get("/api/datasets/bad").json()["status"] == "failed"


class _Labelled(Generator):
    labels: object = None

    def generate(self, n, rng, params):
        return np.zeros((n, 28, 28), np.uint8), {"x": np.zeros(n)}, self.labels


@pytest.mark.parametrize("labels, message", [
    ([42, 0, 1], "got 42 at index 0"), ([0, -2, 1], "got -2 at index 1"), ([0, 10, 11], "(and 1 more)"),
    ([0.5, 1, 2], "not whole numbers"), ([np.nan, 1, 2], "not whole numbers"), ([True, False, True], "bool"),
    (["1", "2", "3"], "integers"), ([1, 2], "3 integers"),
])
def test_every_generator_checks_its_labels(labels, message):
    generator = _Labelled()
    generator.labels = labels
    with pytest.raises(ValueError, match="_Labelled") as error:
        generator.generate(3, np.random.default_rng(0), Generator.Params())
    assert message in str(error.value)


def test_good_labels_pass_as_int64():
    generator = _Labelled()
    for labels in ([-1, 0, 9], np.array([3, 4, 5], np.uint8), [1.0, 2.0, -1.0]):
        generator.labels = labels
        out = generator.generate(3, np.random.default_rng(0), Generator.Params())[2]
        assert out.dtype == np.int64 and out.tolist() == list(map(int, labels))
    assert check_labels(range(10), 10, "G").tolist() == list(range(10))
