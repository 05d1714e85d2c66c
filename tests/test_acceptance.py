"""The milestone acceptance scripts, run as a researcher runs them."""

from __future__ import annotations

import subprocess
import sys

from acc.test_m2 import TASK_FILE
from acc.test_m3 import GENERATOR_FILE


def test_m2_acceptance_passes_and_cleans_up():
    result = subprocess.run([sys.executable, "-m", "acc.test_m2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 7 and all(line.startswith("PASS") for line in lines), result.stdout
    assert "ALL PASS" in result.stdout
    assert not TASK_FILE.exists()


def test_m2_acceptance_fails_clearly_without_a_trainer():
    result = subprocess.run([sys.executable, "-m", "acc.test_m2", "--trainer", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "cannot reach the trainer" in result.stdout
    assert not TASK_FILE.exists()


def test_m3_acceptance_passes_and_cleans_up(generated_data_dir):
    result = subprocess.run([sys.executable, "-m", "acc.test_m3"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 7 and all(line.startswith("PASS") for line in lines), result.stdout
    assert not GENERATOR_FILE.exists()
    assert generated_data_dir.is_dir() and not list(generated_data_dir.iterdir())  # generated there, then deleted


def test_m6_acceptance_passes_in_full():
    """The whole M6 acceptance at the default seed (about two minutes on 2 cores): the recipe's
    tree, the drop after a random expansion, none after an identity one, both recovering past the
    base, the expansion by hand through the API; and the comparison with the control printed."""
    result = subprocess.run([sys.executable, "-m", "acc.test_m6"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 10 and all(line.startswith("PASS") for line in lines), result.stdout
    compared = [line for line in result.stdout.splitlines() if line.startswith("compare")]
    assert len(compared) == 2 and all("the control" in line for line in compared), result.stdout


def test_m4_acceptance_evaluates_beside_training_and_trains_data_parallel():
    """Mode 1 (an evaluation worker beside training) and mode 2 (2 ranks on the CPU, gloo): the
    throughput reported, checkpoints moving between one device and two ranks."""
    result = subprocess.run([sys.executable, "-m", "acc.test_m4"], capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 8 and all(line.startswith("PASS") for line in lines), result.stdout + result.stderr
    assert "samples/s on cpu alone" in result.stdout and "not required to be higher" in result.stdout
    assert result.returncode == 0 and "leaked semaphore" not in result.stderr


def test_m6_summary_puts_the_seeds_together():
    """Per seed the four accuracies; then their means and each grown branch against the control."""
    from acc.acceptance import Checklist
    from acc.test_m6 import Measured, Result, summary

    def result(seed, base, control, random, identity):
        nodes = {name: Measured(value, 0.5, 800) for name, value in zip(
            ("expand_base", "expand_control", "expand_random", "expand_identity"), (base, control, random, identity))}
        return Result(0, seed, Checklist(), nodes)

    lines = summary([result(0, 0.90, 0.92, 0.93, 0.94), result(1, 0.86, 0.88, 0.87, 0.90)]).splitlines()
    assert lines[1].split() == ["0", "90.00%", "92.00%", "93.00%", "94.00%", "PASS"]
    assert lines[3].split() == ["mean", "88.00%", "90.00%", "90.00%", "92.00%"]
    assert lines[4] == "expand_random - control over 2 seeds: +0.00 points (standard error 1.00; better at 1 of 2 seeds)"
    assert lines[5] == "expand_identity - control over 2 seeds: +2.00 points (standard error 0.00; better at 2 of 2 seeds)"
    assert len(summary([result(0, 0.9, 0.9, 0.9, 0.9)]).splitlines()) == 2  # one seed: nothing to put together
