"""M3 acceptance: `python -m acc.test_m3 [--trainer URL] [--token T]`.

Without a URL it starts its own trainer in a temporary workspace. Each step prints PASS or FAIL;
the exit code is 0 only if all pass. It writes `acc/generators/symmetry_gen.py`, generates the
dataset `m3_symmetry` through the API and trains a task on it; the file, the task and the dataset
are removed again (a file that was there before is restored), also on failure.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from PIL import Image

from acc.acceptance import Checklist, main, restored, seconds_until_listed, wait_until
from acc.ui.client import TrainerClient, TrainerError
from acc.workspace import PACKAGE_DIR

SYMMETRY_GENERATOR = '''import numpy as np
from pydantic import BaseModel, Field

from acc.generators.base import Generator


class SymmetryGenerator(Generator):
    """Mirror-symmetric blobs; target `symmetry` in [0, 1], the share of cells equal to their mirror image."""

    class Params(BaseModel):
        noise: float = Field(0.1, ge=0, le=1)

    def generate(self, n, rng, params):
        left = rng.random((n, 7, 4)) < 0.45  # left half and centre column, in cells of 4x4 pixels
        mirrored = left[:, :, 2::-1]  # the right half of a perfectly symmetric pattern
        level = rng.uniform(0, 1, (n, 1, 1))  # how symmetric each pattern is meant to be
        right = np.where(rng.random((n, 7, 3)) < level, mirrored, rng.random((n, 7, 3)) < 0.45)
        symmetry = (right == mirrored).mean(axis=(1, 2))  # measured, not the intended level
        pixels = np.concatenate([left, right], axis=2).repeat(4, axis=1).repeat(4, axis=2) * 255.0
        pixels += rng.normal(0, params.noise * 255, pixels.shape)
        return pixels.clip(0, 255).astype(np.uint8), {"symmetry": symmetry}
'''
GENERATOR_FILE = PACKAGE_DIR / "generators" / "symmetry_gen.py"
DATASET, TASK, IMAGES, TRAIN_STEPS = "m3_symmetry", "m3_symmetry", 2000, 300


def forget(client: TrainerClient) -> None:
    """Remove the task and the dataset this script makes, if they are there."""
    for undo, name in ((client.remove_task, TASK), (client.delete_dataset, DATASET)):
        try:
            undo(name)
        except TrainerError:
            pass  # not there, or the trainer is gone


@contextmanager
def cleaned_up(client: TrainerClient) -> Iterator[None]:
    forget(client)  # left over by an earlier run that was killed
    try:
        yield
    finally:
        forget(client)


def run(url: str, token: str | None) -> int:
    c = Checklist()
    with TrainerClient(url, token) as client, restored(GENERATOR_FILE), cleaned_up(client):
        c.check("trainer reachable", client.health()["ok"], url)

        seconds = seconds_until_listed(url, token, GENERATOR_FILE, SYMMETRY_GENERATOR, "SymmetryGenerator", 2.0)
        names = [item["name"] for item in client.registry("generators")["items"]]
        c.check("SymmetryGenerator listed within 2 s of writing acc/generators/symmetry_gen.py",
                seconds is not None and "SymmetryGenerator" in names,
                f"{seconds:.3f} s" if seconds is not None else "not seen")

        job = client.generate_dataset("SymmetryGenerator", DATASET, IMAGES, seed=0, params={"noise": 0.1})
        wait_until(lambda: client.job(job["id"])["status"] not in ("queued", "running"), 120, 0.1)
        info = client.dataset(DATASET) if client.job(job["id"])["status"] == "done" else {}
        c.check("dataset generated through the API (a background job)",
                info.get("status") == "ready" and info.get("n") == IMAGES and "symmetry" in info.get("targets", []),
                f"job {client.job(job['id'])['status']}: {info.get('n')} images, targets {info.get('targets')}")

        png = client.dataset_grid_png(DATASET, n=32, target="symmetry")
        grid = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
        histograms = client.dataset_histograms(DATASET, bins=10)
        counts = histograms["targets"].get("symmetry", {}).get("counts", [])
        c.check("grid image and histogram served, with real images and their targets",
                png[:8] == b"\x89PNG\r\n\x1a\n" and grid.std() > 20 and sum(counts) == IMAGES
                and len([x for x in counts if x]) > 2,
                f"grid {grid.shape[1]}x{grid.shape[0]} px, histogram {counts}")

        added = client.add_task("RegressionTask", name=TASK, dataset=DATASET, params={"target": "symmetry"})
        c.check("RegressionTask added on the dataset", added["dataset"] == DATASET and added["enabled"])

        start = client.state()["step"]
        client.train("start", steps=TRAIN_STEPS)
        trained = wait_until(lambda: client.state()["step"] >= start + TRAIN_STEPS
                             and client.state()["status"] == "idle", 300, 0.2)
        losses = client.metrics([f"loss/{TASK}"], since=start)[f"loss/{TASK}"]["value"]
        c.check("trained on it: its loss is logged", trained and len(losses) > 0,
                f"{len(losses)} points, last {losses[-1]:.4f}" if losses else "no loss logged")

        results = client.evaluate()["results"].get(TASK, {})
        values = client.dataset_histograms(DATASET, bins=1)["targets"]["symmetry"]
        c.check("evaluation reports the task's MAE", np.isfinite(results.get("mae", np.nan)),
                f"MAE {results.get('mae', float('nan')):.4f} (target std {values['std']:.4f})")
    print(f"{'ALL PASS' if not c.failed else f'{c.failed} FAILED'}", flush=True)
    return 0 if not c.failed else 1


if __name__ == "__main__":
    main(__doc__, run)
