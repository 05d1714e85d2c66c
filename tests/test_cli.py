"""The `acc` command, run as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from acc.store import Store
from tests.server_fixtures import free_port


def acc(*args, workspace, mnist_cache):
    env = {**os.environ, "ACC_WORKSPACE": str(workspace.root), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "acc", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_train_writes_metrics_and_a_checkpoint_that_checkpoints_lists(workspace, mnist_cache):
    result = acc("train", "--steps", "6", "--batch-size", "16", "--eval-every", "3", "--task", "ReconstructionTask",
                 "--task", "ClassificationTask:name=digit,latent=digit,weight=0.5",
                 workspace=workspace, mnist_cache=mnist_cache)
    assert result.returncode == 0, result.stderr
    assert "evaluation at step 6" in result.stdout and "accuracy" in result.stdout
    listing = acc("checkpoints", workspace=workspace, mnist_cache=mnist_cache)
    assert listing.returncode == 0
    assert "final" in listing.stdout and "reconstruction_task, digit" in listing.stdout

    with Store(workspace.db_path) as store:
        run = store.runs()[0]
        series = store.query_metrics(run["id"], ["loss/digit", "eval/digit/accuracy"])
    assert series["loss/digit"]["step"] == [1, 2, 3, 4, 5, 6]
    assert series["eval/digit/accuracy"]["step"] == [3, 6]


def test_a_bad_task_is_a_clear_error(workspace, mnist_cache):
    result = acc("train", "--steps", "2", "--task", "NoSuchTask", workspace=workspace, mnist_cache=mnist_cache)
    assert result.returncode == 2
    assert "NoSuchTask" in result.stdout + result.stderr
    result = acc("train", "--steps", "2", "--task", "RegressionTask:oops", workspace=workspace, mnist_cache=mnist_cache)
    assert result.returncode == 2 and "key=value" in result.stdout + result.stderr


def test_data_generate_and_list(workspace, mnist_cache, generated_data_dir):
    from acc.test_m3 import SYMMETRY_GENERATOR
    from tests.conftest import write_user_files

    write_user_files(workspace, "generators", {"symmetry_gen.py": SYMMETRY_GENERATOR})
    made = acc("data", "generate", "SymmetryGenerator", "sym", "--n", "40", "--seed", "2", "--param", "noise=0.3",
               workspace=workspace, mnist_cache=mnist_cache)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "sym: 40 images, targets symmetry" in made.stdout and (generated_data_dir / "sym.pt").is_file()
    listing = acc("data", "list", workspace=workspace, mnist_cache=mnist_cache)
    assert listing.returncode == 0 and "SymmetryGenerator" in listing.stdout and '{"noise": 0.3}' in listing.stdout
    again = acc("data", "generate", "SymmetryGenerator", "sym", "--n", "4", workspace=workspace, mnist_cache=mnist_cache)
    assert again.returncode == 2 and "already exists" in again.stdout
    with Store(workspace.db_path) as store:
        assert store.runs() == []  # commands that do not train leave no run behind


def test_up_serves_trainer_and_dashboard_and_sigterm_stops_both(workspace, mnist_cache):
    trainer_port, port = free_port(), free_port()
    env = {**os.environ, "ACC_WORKSPACE": str(workspace.root), "COLUMNS": "200"}
    env.pop("PYTEST_CURRENT_TEST", None)  # else NiceGUI thinks it runs under its own test harness
    up = subprocess.Popen([sys.executable, "-m", "acc", "up", "--port", str(port), "--trainer-port", str(trainer_port),
                           "--no-start"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trainer = f"http://127.0.0.1:{trainer_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert up.poll() is None and time.monotonic() < deadline, up.stdout.read() if up.poll() is not None else ""
            time.sleep(0.1)
        state = httpx.get(f"{trainer}/api/state").json()
        assert [t["name"] for t in state["tasks"]] == ["reconstruction_task"] and state["status"] == "idle"

        busy = acc("up", "--port", str(free_port()), "--trainer-port", str(trainer_port),
                   workspace=workspace, mnist_cache=mnist_cache)
        assert busy.returncode == 1 and f"port {trainer_port} is in use" in busy.stdout

        up.send_signal(signal.SIGTERM)
        assert up.wait(30) is not None
        try:
            httpx.get(f"{trainer}/api/health", timeout=2)
            raise AssertionError("the trainer outlived acc up")
        except httpx.ConnectError:
            pass
    finally:
        if up.poll() is None:
            up.kill()
        up.stdout.close()


def test_run_a_recipe_headless_then_again_reusing_its_checkpoints(workspace, mnist_cache):
    from tests.conftest import write_user_files
    from tests.test_recipes import USER_RECIPES

    write_user_files(workspace, "recipes", {"user_recipes.py": USER_RECIPES})
    first = acc("run", "only_recon", "--batch-size", "16", "--threads", "2", workspace=workspace, mnist_cache=mnist_cache)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "OnlyRecon (50 steps)" in first.stdout and "smoke_recon" in first.stdout and "reused" not in first.stdout
    with Store(workspace.db_path) as store:  # held at 2, whatever the process's default (1 in tests)
        assert [[e["threads"] for e in c["meta"]["trained_under"]] for c in store.checkpoints()] == [[2], [2]]
    again = acc("run", "OnlyRecon", "--batch-size", "16", workspace=workspace, mnist_cache=mnist_cache)
    assert again.returncode == 0 and "smoke_base (reused)" in again.stdout and "smoke_recon (reused)" in again.stdout

    unknown = acc("run", "nosuch", workspace=workspace, mnist_cache=mnist_cache)
    assert unknown.returncode == 2 and "known:" in unknown.stdout and "━" not in unknown.stdout
    bad = acc("run", "smoke", "--param", "x=1", workspace=workspace, mnist_cache=mnist_cache)
    assert bad.returncode == 2 and "invalid parameters for recipe Smoke" in bad.stdout
    failing = acc("run", "BadTask", workspace=workspace, mnist_cache=mnist_cache)
    assert failing.returncode == 1 and "NoSuchTask" in failing.stdout and "user_recipes.py:" in failing.stdout
