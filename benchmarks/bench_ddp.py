"""Data-parallel training costs, measured on real ranks (`acc.engine.distributed.Ranks`).

    python benchmarks/bench_ddp.py [--ranks 2] [--batch 64] [--steps 30] [--repeats 5] [--backend gloo]

Spawns `--ranks` processes (gloo on the CPU; `--backend nccl` puts rank r on cuda:r) training the
default Factor-Slot model with a ReconstructionTask-like loss, and one rank alone, all in one run:

1. samples/s of one rank and of N ranks, at the same per-rank batch (N times the samples per
   step) and at the same global batch (each rank `batch / N`): warmed up, medians of repeats, the
   single rank's measured before and after the ranks' so that slow drift in the machine hits both;
2. the gradient all-reduce: one flat all-reduce of every gradient (what `Ranks.average_gradients`
   does) against one all-reduce per parameter (what a naive loop does), median ms;
3. the per-step command check (`Ranks.commands([])`: a one-integer broadcast on the CPU group) as
   a fraction of a training step (target under 2%);
4. the trainer itself (`Engine`, a ReconstructionTask on MNIST, evaluation off): samples/s on one
   device and on N ranks (`Engine.set_ranks`, what `acc trainer --ddp N` does), interleaved
   repeats, so the step boundary's messages and the agreement on task errors are in the figure.

On a CPU the ranks share the cores: more ranks are not expected to be faster there, and the output
says so; on GPUs the target is at least 1.6x for 2 ranks at a per-rank batch of 256 or more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from acc.engine.distributed import Ranks
from acc.models import build_model


def device_of(rank: int, backend: str) -> torch.device:
    return torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples_per_s(ranks: Ranks, batch: int, steps: int, device: torch.device) -> float:
    """Train `steps` steps at `batch` per rank; the job's samples per second (every rank's)."""
    torch.manual_seed(0)
    model = build_model({"name": "factor_slot"}).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 1, 28, 28, device=device)
    params = list(model.parameters())

    def step() -> None:
        ranks.commands([])
        out = model(images)
        loss = F.binary_cross_entropy_with_logits(out["recon"], images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ranks.average_gradients(params)
        optimizer.step()

    for _ in range(3):  # warm-up
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * ranks.world * steps / (time.perf_counter() - start)


def median_ms(work, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        work()
        sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def rank_main(rank: int, world: int, folder: str, args: argparse.Namespace) -> None:
    device = device_of(rank, args.backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend, init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    cpu_group = dist.new_group(backend="gloo") if args.backend != "gloo" else None
    ranks = Ranks(rank, world, cpu_group)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        same_rank = [samples_per_s(ranks, args.batch, args.steps, device) for _ in range(args.repeats)]
        same_global = [samples_per_s(ranks, max(1, args.batch // world), args.steps, device) for _ in range(args.repeats)]

        model = build_model({"name": "factor_slot"}).to(device)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        params = list(model.parameters())
        flat = median_ms(lambda: ranks.average_gradients(params), 50, device)
        each = median_ms(lambda: [dist.all_reduce(p.grad) for p in params], 20, device)
        check = median_ms(lambda: ranks.commands([]), 200, device)
        if rank == 0:
            torch.save({"same_rank": same_rank, "same_global": same_global, "flat_ms": flat, "each_ms": each,
                        "check_ms": check, "floats": sum(p.numel() for p in params), "tensors": len(params)},
                       f"{folder}/ranks.pt")
    finally:
        ranks.close()


def engine_samples_per_s(args: argparse.Namespace, folder: str) -> tuple[float, float]:
    """The trainer's samples/s on one device and on `args.ranks` ranks (medians of interleaved repeats)."""
    from acc.engine import EngineConfig
    from acc.engine.session import Session

    config = EngineConfig(batch_size=args.batch, eval_every=0, autosave_every_s=0,
                          device=str(device_of(0, args.backend)))
    rates: dict[int, list[float]] = {1: [], args.ranks: []}
    with Session.open(f"{folder}/workspace", config, watch=False) as session:
        engine = session.engine
        engine.add_task("ReconstructionTask")
        for _ in range(args.repeats):
            for world in rates:
                engine.set_ranks(world)
                engine.train(5)  # warm up (and the followers' first rebuild)
                start = time.perf_counter()
                engine.train(args.steps)
                rates[world].append(args.steps * args.batch * world / (time.perf_counter() - start))
        engine.set_ranks(1)
    return statistics.median(rates[1]), statistics.median(rates[args.ranks])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch (the global batch is N times it)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    args = parser.parse_args()
    single_device = device_of(0, args.backend)

    with tempfile.TemporaryDirectory(prefix="acc-bench-ddp-") as folder:
        alone_rate, alone_global = [], []
        torch.set_num_threads(os.cpu_count() or 1)
        for _ in range(args.repeats):  # one rank, before and after the ranks' runs
            alone_rate.append(samples_per_s(Ranks(), args.batch, args.steps, single_device))
        mp.start_processes(rank_main, args=(args.ranks, folder, args), nprocs=args.ranks, start_method="spawn")
        for _ in range(args.repeats):
            alone_global.append(samples_per_s(Ranks(), args.batch, args.steps, single_device))
        measured = torch.load(f"{folder}/ranks.pt", weights_only=True)
        engine_alone, engine_ranks = engine_samples_per_s(args, folder)

    alone = statistics.median(alone_rate + alone_global)
    step_ms = 1000 * args.batch / alone
    same_rank, same_global = statistics.median(measured["same_rank"]), statistics.median(measured["same_global"])
    print(f"backend {args.backend}, {args.ranks} ranks, {os.cpu_count()} CPU cores"
          f"{', CUDA devices ' + str(torch.cuda.device_count()) if args.backend == 'nccl' else ''}")
    print(f"1 rank, batch {args.batch}                       {alone:10.0f} samples/s")
    print(f"{args.ranks} ranks, batch {args.batch} each (global {args.batch * args.ranks})   {same_rank:10.0f} samples/s   "
          f"{same_rank / alone:5.2f} x")
    print(f"{args.ranks} ranks, global batch {args.batch} ({args.batch // args.ranks} each)  {same_global:10.0f} samples/s   "
          f"{same_global / alone:5.2f} x")
    if args.backend == "gloo":
        print("   (on a CPU the ranks share the cores: reported, not expected to be faster)")
    print(f"gradient all-reduce, {measured['floats']:,} floats in {measured['tensors']} tensors: one flat "
          f"{measured['flat_ms']:.2f} ms, one per tensor {measured['each_ms']:.2f} ms "
          f"({measured['each_ms'] / measured['flat_ms']:.1f} x)")
    print(f"command check per step {measured['check_ms']:.3f} ms = {100 * measured['check_ms'] / step_ms:.2f}% "
          f"of a 1-rank step ({step_ms:.1f} ms; target under 2%)")
    print(f"the trainer (Engine), batch {args.batch} per rank: 1 device {engine_alone:10.0f} samples/s, "
          f"{args.ranks} ranks {engine_ranks:10.0f} samples/s   {engine_ranks / engine_alone:5.2f} x")


if __name__ == "__main__":
    main()
