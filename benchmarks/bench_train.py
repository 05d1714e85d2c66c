"""Engine overhead: steps/s of the ACC engine vs a bare PyTorch loop, same model, batch and data.

    python benchmarks/bench_train.py [--steps 300] [--rounds 3] [--batch-size 64] [--device auto]

Both run in this process, alternating rounds, so machine noise hits both alike. Prints the
median steps/s of each and, last, `engine/bare ratio: X` (target >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from acc.datasets import BatchStream, load_mnist
from acc.engine import EngineConfig
from acc.engine.session import Session
from acc.engine.trainer import resolve_device
from acc.models import build_model

MODEL = {"name": "factor_slot"}


def bare_loop(steps: int, batch_size: int, device: torch.device, stream: BatchStream) -> float:
    torch.manual_seed(0)
    model = build_model(MODEL).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        batch = stream.next()
        loss = F.binary_cross_entropy_with_logits(model(batch["image"])["recon"], batch["image"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # a real loop looks at its loss; the engine does too

    for _ in range(10):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def engine_loop(steps: int, batch_size: int, device: torch.device, workspace: str) -> float:
    config = EngineConfig(model=MODEL, batch_size=batch_size, device=str(device), eval_every=0)
    with Session.open(workspace, config, watch=False) as session:
        session.engine.add_task("ReconstructionTask")
        session.engine.train(10)
        start = time.perf_counter()
        session.engine.train(steps)
        return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as workspace:
        digits = load_mnist(Path(workspace) / "mnist")
        train, _ = digits.split(0.1, seed=0)
        stream = BatchStream(train, args.batch_size, seed=0, device=device)
        bare, engine = [], []
        for round_ in range(args.rounds):
            bare.append(bare_loop(args.steps, args.batch_size, device, stream))
            engine.append(engine_loop(args.steps, args.batch_size, device, workspace))
            print(f"round {round_ + 1}: bare {bare[-1]:.1f} steps/s, engine {engine[-1]:.1f} steps/s")
    b, e = statistics.median(bare), statistics.median(engine)
    print(f"device {device}, model {MODEL['name']}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds")
    print(f"bare: {b:.1f} steps/s, engine: {e:.1f} steps/s")
    print(f"engine/bare ratio: {e / b:.3f}")


if __name__ == "__main__":
    main()
