"""What the milestone acceptance scripts (`python -m acc.test_m2`, `acc.test_m3`, `acc.test_m5`,
`acc.test_m6`) share: the PASS/FAIL checklist, polling and waiting for jobs, a trainer of their own,
user files put in place and taken away, registry events, and `main`.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from acc.ui.client import TrainerClient, TrainerError


class Checklist:
    """Prints PASS or FAIL per step and remembers every step (name, ok, detail) for callers such as tests."""

    def __init__(self) -> None:
        self.failed = 0
        self.steps: list[tuple[str, bool, str]] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {name}{f'  ({detail})' if detail else ''}", flush=True)
        self.steps.append((name, bool(ok), detail))
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


def wait_job(client: TrainerClient, job_id: str, timeout: float, label: str, every: float = 60.0) -> dict:
    """Poll the job until it ends (cancelled after `timeout` s); print its progress every `every` s."""
    start = last = time.monotonic()
    job = client.job(job_id)
    while job["status"] in ("queued", "running") and time.monotonic() - start < timeout:
        time.sleep(0.5 if time.monotonic() - start > 5 else 0.1)
        job = client.job(job_id)
        if time.monotonic() - last >= every:
            last = time.monotonic()
            print(f"      {label}: {job['status']} {100 * job['progress']:.0f}% after "
                  f"{time.monotonic() - start:.0f} s", flush=True)
    if job["status"] in ("queued", "running"):  # timed out: stop it, so that the next job may run
        client.cancel_job(job_id)
        wait_until(lambda: client.job(job_id)["status"] not in ("queued", "running"), 120, 0.5)
        job = {**client.job(job_id), "error": f"timed out after {timeout:.0f} s; cancelled"}
    return job


@contextmanager
def own_trainer(*options: str, log_path: Path | None = None, launcher: tuple[str, ...] = (sys.executable,),
                workspace: str | None = None) -> Iterator[str]:
    """`acc trainer --fresh [options]` on a free port over a temporary workspace (or `workspace`),
    started by `launcher` (e.g. torchrun and its options); its output goes to `log_path` (default:
    this process's). Stopped at the end of the block."""
    with tempfile.TemporaryDirectory(prefix="acc-acceptance-") as scratch, \
            (open(log_path, "wb") if log_path else contextlib.nullcontext()) as log:
        port = free_port()
        process = subprocess.Popen([*launcher, "-m", "acc", "trainer", "--fresh", "--port", str(port),
                                    "--workspace", workspace or scratch, *options],
                                   stdout=log, stderr=subprocess.STDOUT if log else None)
        url = f"http://127.0.0.1:{port}"
        where = f"; see {log_path}" if log_path else ""
        try:
            with TrainerClient(url) as client:
                def up() -> bool:
                    if process.poll() is not None:
                        raise RuntimeError(f"the trainer exited with {process.returncode}{where}")
                    try:
                        return client.health()["ok"]
                    except TrainerError:
                        return False
                if not wait_until(up, 120, 0.2):
                    raise RuntimeError(f"the trainer at {url} did not start{where}")
            yield url
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


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


def seed_parser(doc: str) -> argparse.ArgumentParser:
    """`--trainer URL --token T` or `--seed N ...` (a trainer of its own per seed), for `run_per_seed`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--trainer", help="URL of a running trainer (default: start one per seed)")
    parser.add_argument("--token")
    parser.add_argument("--seed", type=int, action="append", dest="seeds",
                        help="seed of a trainer of its own (repeatable; each in its own workspace; default 0)")
    return parser


def run_per_seed(args: argparse.Namespace, run: Callable[[str, str | None, int | None, Path], Any], out: Path,
                 summary: Callable[[list], str]) -> int:
    """`run(url, token, seed, folder)` against `--trainer`, or against a trainer of its own per
    `--seed` (default 0; its log in `out/seed<N>/trainer.log`), one after the other; with several
    seeds, `summary(results)` is printed. The exit code: 0 only if every result's `code` is 0."""
    if args.trainer and args.seeds:
        raise SystemExit("--seed applies to a trainer of its own; a running trainer (--trainer) has its own seed")
    results = []
    try:
        if args.trainer:
            results.append(run(args.trainer, args.token, None, out))
        else:
            for seed in args.seeds or [0]:
                folder = out / f"seed{seed}"
                folder.mkdir(parents=True, exist_ok=True)
                print(f"==== seed {seed}: own trainer (log {folder / 'trainer.log'})", flush=True)
                clock = time.monotonic()
                with own_trainer("--seed", str(seed), log_path=folder / "trainer.log") as url:
                    results.append(run(url, None, seed, folder))
                print(f"==== seed {seed}: {time.monotonic() - clock:.0f} s in all", flush=True)
    except Exception as e:  # any failure is a FAIL line, never a traceback without a verdict
        print(f"FAIL  acceptance aborted: {type(e).__name__}: {e}", flush=True)
        return 1
    if len(results) > 1:
        print("\n" + summary(results), flush=True)
    return 0 if all(r.code == 0 for r in results) else 1


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
            with own_trainer("--eval-every", "50", "--batch-size", "32") as url:  # a tiny-enough model
                code = run(url, None)
    except Exception as e:  # any failure is a FAIL line, never a traceback without a verdict
        print(f"FAIL  acceptance aborted: {type(e).__name__}: {e}", flush=True)
        code = 1
    sys.exit(code)
