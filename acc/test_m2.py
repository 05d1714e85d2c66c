"""M2 acceptance: `python -m acc.test_m2 [--trainer URL] [--token T]`.

Without a URL it starts its own trainer in a temporary workspace. Each step prints PASS or FAIL;
the exit code is 0 only if all pass. The task file it writes, `acc/tasks/dummy_task.py`, is
removed again (and a file that was there before is restored), also on failure.
"""

from __future__ import annotations

import io

from acc.acceptance import Checklist, main, restored, seconds_until_listed, wait_until
from acc.ui.client import TrainerClient
from acc.workspace import PACKAGE_DIR

DUMMY_TASK = '''import torch.nn.functional as F
from acc.tasks.base import Task

class DummyTask(Task):
    """Predict mean pixel intensity from the whole latent."""
    def loss(self, out, batch):
        pred = self.head(self.features(out)).squeeze(-1)
        return F.mse_loss(pred, batch["image"].mean(dim=(1, 2, 3)))
'''
TASK_FILE = PACKAGE_DIR / "tasks" / "dummy_task.py"


def run(url: str, token: str | None) -> int:
    c = Checklist()
    with TrainerClient(url, token) as client, restored(TASK_FILE):
        state = client.state()
        if not state["tasks"]:
            client.add_task("ReconstructionTask")
        if state["status"] != "running":
            client.train("start")
        step0 = client.state()["step"]
        c.check("trainer running with a model and tasks, training",
                wait_until(lambda: client.state()["step"] > step0, 30)
                and client.state()["status"] == "running" and bool(client.state()["tasks"]),
                f"model {state['model']['name']}, tasks {[t['name'] for t in client.state()['tasks']]}")

        client.train("pause")
        before = client.fingerprints()
        listed_after = seconds_until_listed(url, token, TASK_FILE, DUMMY_TASK, "DummyTask", 2.0)
        names = [item["name"] for item in client.registry("tasks")["items"]]
        c.check("DummyTask listed within 2 s of writing acc/tasks/dummy_task.py",
                listed_after is not None and "DummyTask" in names,
                f"{listed_after:.3f} s" if listed_after is not None else "not seen")
        after = client.fingerprints()
        c.check("model and existing task heads unchanged by the reload (training paused)",
                before["model"] == after["model"] and before["tasks"] == after["tasks"],
                f"model {after['model'][:12]}")

        added = client.add_task("DummyTask")
        c.check("DummyTask added through the API", added["name"] == "dummy_task" and added["enabled"])
        client.train("resume")
        step1 = client.state()["step"]
        seen = wait_until(lambda: bool(client.metrics(["loss/dummy_task"], since=step1)["loss/dummy_task"]["step"]), 30)
        c.check("training goes on and loss/dummy_task appears in the metrics", seen)

        results = client.evaluate()["results"]
        c.check("per-task evaluation metrics served", "dummy_task" in results and "loss" in results["dummy_task"]
                and any(e["results"] for e in client.evals()), f"{sorted(results)}")
        png = client.reconstructions_png(8)
        from PIL import Image
        width, height = Image.open(io.BytesIO(png)).size
        c.check("reconstruction image served", png[:8] == b"\x89PNG\r\n\x1a\n" and width > height > 0,
                f"{width}x{height} PNG")
        client.remove_task("dummy_task")
    print(f"{'ALL PASS' if not c.failed else f'{c.failed} FAILED'}", flush=True)
    return 0 if not c.failed else 1


if __name__ == "__main__":
    main(__doc__, run)
