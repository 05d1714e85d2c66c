"""M2 acceptance: `python -m acc.test_m2 [--trainer URL] [--token T]`.

Without a URL it starts its own trainer in a temporary workspace. Each step prints PASS or FAIL;
the exit code is 0 only if all pass. The task file it writes, `acc/tasks/dummy_task.py`, is
removed again (and a file that was there before is restored), also on failure.
"""

from __future__ import annotations

import argparse
import io
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from acc.ui.client import TrainerClient, TrainerError
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


class Checklist:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {name}{f'  ({detail})' if detail else ''}", flush=True)
        self.failed += not ok
        return ok


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll an API-level condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def own_trainer() -> Iterator[str]:
    """A trainer subprocess on a free port over a temporary workspace, with a tiny-enough model."""
    with tempfile.TemporaryDirectory(prefix="acc-m2-") as workspace:
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "acc", "trainer", "--port", str(port),
                                    "--workspace", workspace, "--eval-every", "50", "--batch-size", "32"])
        url = f"http://127.0.0.1:{port}"
        try:
            with TrainerClient(url) as client:
                def up() -> bool:
                    try:
                        return client.health()["ok"]
                    except TrainerError:
                        return False
                if not wait_until(up, 90, 0.2):
                    raise RuntimeError(f"the trainer at {url} did not start")
            yield url
        finally:
            process.terminate()
            process.wait(15)


@contextmanager
def task_file() -> Iterator[None]:
    previous = TASK_FILE.read_bytes() if TASK_FILE.exists() else None
    try:
        yield
    finally:
        if previous is None:
            TASK_FILE.unlink(missing_ok=True)
        else:
            TASK_FILE.write_bytes(previous)


def registry_events(client: TrainerClient, stop: threading.Event) -> "queue.Queue[dict]":
    """Registry events from the trainer's stream, collected by a background thread."""
    events: queue.Queue[dict] = queue.Queue()

    def read() -> None:
        try:
            for event in client.stream(stop):
                events.put(event)
        except TrainerError as e:
            events.put({"event": "stream-error", "data": str(e)})

    threading.Thread(target=read, daemon=True).start()
    return events


def run(url: str, token: str | None) -> int:
    c = Checklist()
    with TrainerClient(url, token) as client, task_file():
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
        before = client.state()["fingerprints"]
        stop = threading.Event()
        stream_client = TrainerClient(url, token)
        events = registry_events(stream_client, stop)
        try:
            first = events.get(timeout=10)  # the stream is open (hello) before the file appears
            written = time.monotonic()
            TASK_FILE.write_text(DUMMY_TASK)
            listed_after = None
            deadline = written + 2.0
            while listed_after is None and time.monotonic() < deadline:
                try:
                    event = events.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if event["event"] == "registry" and "DummyTask" in str(event["data"]):
                    listed_after = time.monotonic() - written
            names = [item["name"] for item in client.registry("tasks")["items"]]
            c.check("DummyTask listed within 2 s of writing acc/tasks/dummy_task.py",
                    listed_after is not None and "DummyTask" in names and first["event"] != "stream-error",
                    f"{listed_after:.3f} s" if listed_after is not None else "not seen")
        finally:
            stop.set()
            stream_client.close()
        after = client.state()["fingerprints"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", help="URL of a running trainer (default: start one)")
    parser.add_argument("--token")
    args = parser.parse_args()
    try:
        if args.trainer:
            code = run(args.trainer, args.token)
        else:
            with own_trainer() as url:
                code = run(url, None)
    except Exception as e:  # any failure is a FAIL line, never a traceback without a verdict
        print(f"FAIL  acceptance aborted: {type(e).__name__}: {e}", flush=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
