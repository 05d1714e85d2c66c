"""M4 acceptance: `python -m acc.test_m4 [--trainer URL] [--token T]`.

Without a URL it starts its own trainer in a temporary workspace. The roadmap's three checks,
through the API as a user would, PASS or FAIL each (exit code 0 only if all pass):

1. Training on one device while an evaluation runs on another, neither blocking the other: with
   two CUDA devices, training on cuda:0 and the evaluation worker on cuda:1; on a machine without
   two GPUs, both on the CPU (the worker is a process of its own) — the output says which. While a
   factoring evaluation of a checkpoint (traversals and all) runs in the worker, training keeps
   making steps (counted during the job), and an [Eval] answered meanwhile carries the step of
   the snapshot it evaluated.
2. Data-parallel throughput against a single device: the same steps on one device and on 2 ranks
   (`PUT /api/devices {"mode": "ddp", "ranks": 2}`, as `acc trainer --ddp 2` starts), samples/s of
   each printed (the median of the trainer's own `samples_per_s` over the steps). On the CPU the
   two ranks share the same cores, so the figure is reported, not required to be higher (the
   output says so); on CUDA devices data parallel must be faster. Every rank's weights equal.
3. A single-device checkpoint loads in data-parallel mode, and the reverse: after each load every
   rank holds exactly the checkpoint's tensors (fingerprints), and an evaluation (the same
   held-out images, a fixed batch) gives the same losses as where it was saved.
"""

from __future__ import annotations

import statistics
import time

import torch

from acc.acceptance import Checklist, main, wait_job, wait_until
from acc.ui.client import TrainerClient


def device_pair() -> tuple[str, str, str]:
    """(train device, eval device, what ran, in words)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count >= 2:
        return "cuda:0", "cuda:1", f"two CUDA devices of {count}"
    return "cpu", "cpu", "no two GPUs here: CPU devices (the evaluation worker is a process of its own)"


def run_beside(c: Checklist, client: TrainerClient) -> None:
    """Check 1: an evaluation on the eval device while training goes on."""
    train, evaluate, which = device_pair()
    print(f"      devices: {which}", flush=True)
    roles = client.set_devices(train=train, eval=evaluate)
    c.check(f"roles set: training on {train}, evaluation worker on {evaluate}",
            roles["train"] == train and roles["eval"] == evaluate and bool(roles["eval_worker"]["alive"]),
            f"devices {[d['name'] for d in roles['devices']]}")
    if not client.state()["tasks"]:
        client.add_task("ReconstructionTask")
    client.train("start", steps=200)
    wait_until(lambda: client.state()["step"] >= 200 or client.state()["status"] != "running", 300, 0.2)
    checkpoint = client.save_checkpoint("m4-beside")
    client.train("start")  # until stopped
    try:
        before, clock = client.state()["step"], time.monotonic()
        job = wait_job(client, client.start_factoring(checkpoint["id"])["id"], 1800, "factoring")
        seconds, during = time.monotonic() - clock, client.state()["step"] - before
        report = client.factoring_or_none(checkpoint["id"])
        c.check("a factoring evaluation (traversals included) completed in the worker",
                job["status"] == "done" and report is not None and bool(report.get("traversal")),
                f"job {job['status']} in {seconds:.1f} s {job.get('error') or ''}".strip())
        c.check("training kept making steps during it", during > 0,
                f"{during} steps in those {seconds:.1f} s ({during / max(seconds, 1e-9):.1f} steps/s)")
        asked = client.state()["step"]
        result = client.evaluate()
        c.check("an [Eval] meanwhile is answered from a snapshot, at its step",
                bool(result["results"]) and asked <= result["step"] < client.state()["step"],
                f"evaluated step {result['step']}, asked at {asked}, training at {client.state()['step']} now")
    finally:
        client.train("stop")
        client.set_devices(eval=None)


def samples_per_s(client: TrainerClient, steps: int) -> float:
    """Train `steps` steps and return the median of the trainer's samples/s over them."""
    start = client.state()["step"]
    client.train("start", steps=steps)
    wait_until(lambda: client.state()["status"] != "running", 600, 0.1)
    rates = [v for v in client.metrics(["samples_per_s"], since=start + 1)["samples_per_s"]["value"] if v > 0]
    return statistics.median(rates) if rates else 0.0


def in_step(client: TrainerClient) -> tuple[bool, dict]:
    prints = client.fingerprints()
    return all({k: r[k] for k in ("model", "tasks")} == {k: prints[k] for k in ("model", "tasks")}
               for r in prints["ranks"]), prints


def run_data_parallel(c: Checklist, client: TrainerClient, steps: int = 150) -> None:
    """Checks 2 and 3: throughput on one device and on 2 ranks; checkpoints between the two."""
    train = device_pair()[0] if torch.cuda.device_count() >= 2 else "cpu"
    which = "two CUDA devices, nccl" if train.startswith("cuda") else "CPU processes on the same cores, gloo"
    print(f"      data parallel: {which}", flush=True)
    client.set_devices(train=train)
    samples_per_s(client, 20)  # warm up
    alone = samples_per_s(client, steps)
    roles = client.set_devices(mode="ddp", ranks=2)
    c.check("2 ranks started", (roles["mode"], roles["ranks"]) == ("ddp", 2), f"mode {roles['mode']} × {roles['ranks']}")
    samples_per_s(client, 20)
    ranked = samples_per_s(client, steps)
    same, prints = in_step(client)
    ratio = ranked / alone if alone else 0.0
    if train.startswith("cuda"):
        ok, note = ratio > 1.0, "required to be higher on CUDA devices"
    else:
        ok, note = ranked > 0, "on the CPU reported, not required to be higher: both ranks share the same cores"
    c.check("data-parallel throughput against a single device", ok and same,
            f"{alone:,.0f} samples/s on {train} alone, {ranked:,.0f} on 2 ranks ({ratio:.2f}x; {note}); "
            f"ranks in step: {same} ({len(prints['ranks'])} fingerprints)")

    # Check 3: a checkpoint saved on 2 ranks loads on one device, and the reverse.
    ranked_ckpt, ranked_prints, ranked_eval = client.save_checkpoint("m4-two-ranks"), client.fingerprints(), client.evaluate()
    client.set_devices(mode="single")
    client.load_checkpoint(ranked_ckpt["id"])
    here, here_eval = client.fingerprints(), client.evaluate()
    to_one = here["model"] == ranked_prints["model"] and here_eval["results"] == ranked_eval["results"]
    client.train("start", steps=20)
    wait_until(lambda: client.state()["status"] != "running", 300, 0.1)
    alone_ckpt, alone_prints, alone_eval = client.save_checkpoint("m4-one-device"), client.fingerprints(), client.evaluate()
    client.set_devices(mode="ddp", ranks=2)
    client.load_checkpoint(alone_ckpt["id"])
    same, prints = in_step(client)
    there_eval = client.evaluate()
    to_two = same and prints["model"] == alone_prints["model"] and there_eval["results"] == alone_eval["results"]
    loss = next(iter(there_eval["results"].values()), {}).get("loss")
    c.check("a single-device checkpoint loads in data-parallel mode, and the reverse", to_one and to_two,
            f"2 ranks -> 1 device: tensors and evaluation equal {to_one}; 1 device -> 2 ranks: every rank's "
            f"tensors and the evaluation equal {to_two} (eval loss {loss})")
    client.set_devices(mode="single")


def run(url: str, token: str | None) -> int:
    c = Checklist()
    with TrainerClient(url, token, timeout=600) as client:
        c.check("trainer reachable", client.health()["ok"], url)
        run_beside(c, client)
        run_data_parallel(c, client)
    print("ALL PASS" if not c.failed else f"{c.failed} FAILED", flush=True)
    return 0 if not c.failed else 1


if __name__ == "__main__":
    main(__doc__, run)
