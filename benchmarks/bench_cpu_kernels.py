"""CPU kernels: training steps/s of the default model with the machine's own instruction set
against the same training with torch held to AVX2 kernels.

    python benchmarks/bench_cpu_kernels.py [--steps 40] [--rounds 6] [--batch-size 64] [--threads N]

torch picks its CPU kernels (ATen's and oneDNN's) once, at import, from ATEN_CPU_CAPABILITY and
ONEDNN_MAX_CPU_ISA; so each setting trains in a process of its own. The processes are started
once and then told in turn to train a segment of `--steps` steps, so that machine noise hits both
alike (one trains while the other waits). Prints each process's instruction set and thread count,
the median steps/s of each, and last `avx2/default ratio: X`. A ratio above 1 says AVX2 kernels
train this model faster here; they also give other numerics (a seed's run is another draw: see
the README's "Same seed, same result?"), so compare runs trained under one setting only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"default": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def worker(batch_size: int, threads: int) -> None:
    """Build the default model's training once; then, per line "N" on stdin, train N steps and
    print their steps/s as a JSON line."""
    import torch
    import torch.nn.functional as F

    from acc.datasets import BatchStream
    from acc.mnist import load_mnist
    from acc.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workspace:
        train, _ = load_mnist(Path(workspace) / "mnist").split(0.1, seed=0)
    stream = BatchStream(train, batch_size, seed=0)
    model = build_model({"name": "factor_slot"}).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train(steps: int) -> None:
        for _ in range(steps):
            batch = stream.next()
            loss = F.binary_cross_entropy_with_logits(model(batch["image"])["recon"], batch["image"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()

    train(5)  # warm-up: first calls pick and build kernels
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}),
          flush=True)
    for line in sys.stdin:
        steps = int(line)
        start = time.perf_counter()
        train(steps)
        print(json.dumps({"steps_per_s": steps / (time.perf_counter() - start)}), flush=True)


def reply(process: subprocess.Popen) -> dict:
    """The worker's next JSON line (it may print other lines first, e.g. where MNIST came from)."""
    for line in process.stdout:
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"a worker exited with code {process.wait()} before answering (see its error above)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40, help="steps per segment")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="training threads in each process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.batch_size, args.threads)
    processes = {}
    for name, env in SETTINGS.items():
        processes[name] = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        about = {name: reply(p) for name, p in processes.items()}
        for name, info in about.items():
            print(f"{name}: {info['capability']} kernels, {info['threads']} threads")
        if about["default"]["capability"] == about["avx2"]["capability"]:
            print(f"this machine's own kernels are {about['default']['capability']} already: "
                  "both run the same kernels, so the ratio only shows the noise")
        rates: dict[str, list[float]] = {name: [] for name in processes}
        for round_ in range(args.rounds):
            for name, p in processes.items():
                p.stdin.write(f"{args.steps}\n")
                p.stdin.flush()
                rates[name].append(reply(p)["steps_per_s"])
            print(f"round {round_ + 1}: " + ", ".join(f"{name} {r[-1]:.1f} steps/s" for name, r in rates.items()))
    finally:
        for p in processes.values():
            p.stdin.close()
            p.wait(timeout=60)
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"model factor_slot, batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps each")
    print(", ".join(f"{name}: {m:.1f} steps/s" for name, m in median.items()))
    print(f"avx2/default ratio: {median['avx2'] / median['default']:.3f}")


if __name__ == "__main__":
    main()
