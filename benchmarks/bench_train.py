"""Engine overhead: steps/s of the ACC engine vs a bare PyTorch loop, same model, batch and data.

    python benchmarks/bench_train.py [--steps 40] [--rounds 8] [--batch-size 64] [--device auto]

Both are built once, then run in alternating segments of `--steps` steps, so that machine noise
(large on shared CPUs) hits both alike. Prints the median steps/s of each and, last,
`engine/bare ratio: X` (target >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from acc.datasets import BatchStream
from acc.engine import EngineConfig
from acc.engine.devices import resolve_device
from acc.engine.session import Session
from acc.mnist import load_mnist
from acc.models import build_model

MODEL = {"name": "factor_slot"}


class BareLoop:
    """What a researcher would write by hand: forward, loss, backward, step, look at the loss."""

    def __init__(self, stream: BatchStream, device: torch.device) -> None:
        torch.manual_seed(0)
        self.stream, self.device = stream, device
        self.model = build_model(MODEL).to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def train(self, steps: int) -> None:
        for _ in range(steps):
            batch = self.stream.next()
            loss = F.binary_cross_entropy_with_logits(self.model(batch["image"])["recon"], batch["image"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss.item()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def rate(train, steps: int) -> float:
    start = time.perf_counter()
    train(steps)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40, help="steps per segment")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as workspace:
        train, _ = load_mnist(Path(workspace) / "mnist").split(0.1, seed=0)
        bare = BareLoop(BatchStream(train, args.batch_size, seed=0, device=device), device)
        config = EngineConfig(model=MODEL, batch_size=args.batch_size, device=str(device), eval_every=0)
        with Session.open(workspace, config, watch=False) as session:
            engine = session.engine
            engine.add_task("ReconstructionTask")
            bare.train(10)  # warm-up
            engine.train(10)
            bare_rates, engine_rates = [], []
            for round_ in range(args.rounds):
                bare_rates.append(rate(bare.train, args.steps))
                engine_rates.append(rate(engine.train, args.steps))
                print(f"round {round_ + 1}: bare {bare_rates[-1]:.1f} steps/s, engine {engine_rates[-1]:.1f} steps/s")
    b, e = statistics.median(bare_rates), statistics.median(engine_rates)
    print(f"device {device}, model {MODEL['name']}, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.steps} steps each")
    print(f"bare: {b:.1f} steps/s, engine: {e:.1f} steps/s")
    print(f"engine/bare ratio: {e / b:.3f}")


if __name__ == "__main__":
    main()
