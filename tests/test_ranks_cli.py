"""Data-parallel trainers started from the command line, as a researcher starts them: `acc trainer
--ddp 2` (ranks spawned on this box) and `torchrun --nproc-per-node 2 -m acc trainer` (ranks
started by PyTorch's launcher; rank 0 serves the API, rank 1 only computes). CPU ranks, gloo."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from acc.acceptance import own_trainer, wait_until
from acc.ui.client import TrainerClient

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def train_in_step(url: str) -> dict:
    """Train a few steps with a task added live; every rank's tensors must be equal after."""
    with TrainerClient(url, timeout=120) as client:
        devices = client.devices()
        assert (devices["mode"], devices["ranks"]) == ("ddp", 2), devices
        client.add_task("ReconstructionTask")
        client.train("start", steps=4)
        assert wait_until(lambda: client.state()["status"] == "idle" and client.state()["step"] == 4, 120, 0.1)
        client.add_task("ClassificationTask", name="digit", latent="digit")
        client.train("start", steps=3)
        assert wait_until(lambda: client.state()["status"] == "idle" and client.state()["step"] == 7, 120, 0.1)
        prints = client.fingerprints()
        assert len(prints["ranks"]) == 2 and prints["ranks"][0] == prints["ranks"][1], prints
        assert set(prints["tasks"]) == {"digit"}
        return devices


def test_acc_trainer_ddp_starts_two_ranks(workspace):
    with own_trainer("--ddp", "2", "--batch-size", "16", "--eval-every", "0", workspace=str(workspace.root)) as url:
        train_in_step(url)
        single = httpx.put(f"{url}/api/devices", json={"mode": "single"})
        assert single.status_code == 200 and single.json()["ranks"] == 1


def test_torchrun_starts_ranks_that_join_rank_0(workspace):
    launcher = (TORCHRUN, "--standalone", "--nproc-per-node", "2")
    with own_trainer("--batch-size", "16", "--eval-every", "0", launcher=launcher,
                     workspace=str(workspace.root)) as url:
        train_in_step(url)
        fixed = httpx.put(f"{url}/api/devices", json={"mode": "single"})
        assert fixed.status_code == 422 and "torchrun" in fixed.json()["detail"]
