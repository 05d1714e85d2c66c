"""Starting the ranks of a data-parallel job on one box (`acc trainer --ddp N`, or the devices
panel): rank 0 is the trainer's own process, ranks 1..N-1 are spawned processes
(`acc.engine.follower`), and all of them join one `torch.distributed` process group over TCP on
the loopback interface. Across machines, torchrun starts the ranks instead and `Ranks.from_environment`
joins them (see the README, "Several devices").

Backends: `nccl` when the ranks train on CUDA devices (rank r on the r-th device from the train
device on), `gloo` on the CPU; commands always go over a `gloo` group (`Ranks.cpu_group`).
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from datetime import timedelta

import torch
import torch.distributed as dist

from acc.engine.distributed import Ranks

JOIN_TIMEOUT_S = 180  # spawned ranks import torch first: on a busy 2-core box that takes a while
COLLECTIVE_TIMEOUT_S = 1800


def rank_devices(train_device: torch.device, world: int) -> list[str]:
    """The device of every rank: the CPU for all, or one CUDA device each from the train device on."""
    if train_device.type != "cuda":
        return [str(train_device)] * world
    first, count = train_device.index or 0, torch.cuda.device_count()
    if first + world > count:
        raise ValueError(f"{world} ranks need {world} CUDA devices from {train_device} on; "
                         f"this machine has {count}")
    return [f"cuda:{first + r}" for r in range(world)]


def join(rank: int, world: int, address: str, port: int, device: str, timeout_s: float = JOIN_TIMEOUT_S) -> Ranks:
    """Join the job's process group as `rank` (blocks until every rank has joined, or raises)."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    store = dist.TCPStore(address, port, world, is_master=rank == 0, timeout=timedelta(seconds=timeout_s))
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    return Ranks(rank, world, cpu_group)


def start_ranks(world: int, engine_config, data_root: str, devices: list[str]) -> tuple[Ranks, list]:
    """Spawn ranks 1..world-1 and join them as rank 0; returns rank 0's `Ranks` and the processes.
    A rank that fails to start makes this raise (its processes stopped), never hang."""
    from acc.engine.follower import follower_main  # the follower imports the engine

    port = free_port()
    context = multiprocessing.get_context("spawn")  # never fork a process that holds threads
    processes = [context.Process(target=follower_main, name=f"acc-rank-{rank}", daemon=True,
                                 args=(rank, world, "127.0.0.1", port, devices[rank], asdict(engine_config), data_root))
                 for rank in range(1, world)]
    for process in processes:
        process.start()
    joined: Future = Future()
    # Joining blocks until every rank is in; a rank that dies first must not keep us waiting.
    threading.Thread(target=lambda: _settle(joined, join, 0, world, "127.0.0.1", port, devices[0]),
                     name="acc-join-ranks", daemon=True).start()
    while True:
        try:
            return joined.result(timeout=0.5), processes
        except FutureTimeout:
            dead = [p for p in processes if p.exitcode is not None]
            if not dead:
                continue
            error = f"{dead[0].name} exited (code {dead[0].exitcode}) before joining; its error is in the log"
        except Exception as e:
            error = str(e)
        stop_processes(processes, 0)
        raise RuntimeError(f"data-parallel training on {world} ranks did not start: {error}")


def _settle(future: Future, function, *args) -> None:
    try:
        future.set_result(function(*args))
    except BaseException as e:
        future.set_exception(e)


def stop_processes(processes: list, timeout_s: float = 15) -> None:
    for process in processes:
        process.join(timeout_s)
        if process.is_alive():
            process.terminate()
            process.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
