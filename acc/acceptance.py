"""What the milestone acceptance scripts (`python -m acc.test_m2`, `acc.test_m3`) share: the
PASS/FAIL checklist, polling, a trainer of their own, user files put in place and taken away,
registry events, and `main`.
"""

from __future__ import annotations

import argparse
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from acc.ui.client import TrainerClient, TrainerError


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
    with tempfile.TemporaryDirectory(prefix="acc-acceptance-") as workspace:
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
def restored(path: Path) -> Iterator[None]:
    """Whatever the block writes at `path` is undone at its end: removed, or the old file put back."""
    previous = path.read_bytes() if path.exists() else None
    try:
        yield
    finally:
        if previous is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(previous)


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


def seconds_until_listed(url: str, token: str | None, path: Path, source: str, name: str,
                         timeout: float) -> float | None:
    """Write `source` at `path`; seconds until the trainer's stream reports `name` in a registry
    event, or None if it did not within `timeout`."""
    stop = threading.Event()
    stream_client = TrainerClient(url, token)
    events = registry_events(stream_client, stop)
    try:
        if events.get(timeout=10)["event"] == "stream-error":  # else it was hello: the stream is open
            return None
        written = time.monotonic()
        path.write_text(source)
        deadline = written + timeout
        while time.monotonic() < deadline:
            try:
                event = events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if event["event"] == "registry" and name in str(event["data"]):
                return time.monotonic() - written
        return None
    finally:
        stop.set()
        stream_client.close()


def main(doc: str, run: Callable[[str, str | None], int]) -> None:
    """Parse `--trainer URL --token T`, run the checks against that trainer or a fresh one, exit."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
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
