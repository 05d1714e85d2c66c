"""What several ranks need at a step boundary (M4, mode 2): `Ranks`.

The training loop calls the same four things on one device and on many; with one rank they do
nothing. With several (`torch.distributed`, started by torchrun or by a trainer's own ranks):

- `average_gradients`: the gradients that exist, averaged across ranks in ONE flat all-reduce.
  Not `DistributedDataParallel`: its buckets are fixed when it wraps the model, and here the set of
  trainable parameters changes live (task heads come and go, tasks are disabled, M6 grows the
  model), so DDP would need `find_unused_parameters` and a new wrapper after every change. One
  flat all-reduce of what exists is as cheap as DDP's buckets and needs no rebuild (issue 12's
  measurement on this 2-core box, gloo: one 112k-float all-reduce 0.9 ms, against 18 to 20 ms for
  one all-reduce per parameter).
  Which parameters have a gradient is the same on every rank, because every rank applies the same
  commands at the same step; a parameter without one stays without one (Adam must not see zeros).
- `broadcast_parameters`: rank 0's values to every rank, after a structural change or a load.
- `commands`: rank 0's commands for this step boundary, as JSON (plain data, never pickles of user
  objects), to every rank: a one-integer all-reduce every step, the bytes only when there are any.
- `any`: a collective yes/no (a non-finite loss on one rank skips the step on all of them: a rank
  that skipped an all-reduce alone would hang the job).

Flags and commands go over a CPU (`gloo`) group, so they cost no device synchronisation; gradients
go over the default group (`nccl` on CUDA devices, `gloo` on the CPU).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


class Ranks:
    """One rank's view of the job; `Ranks()` (one rank) makes every call a no-op."""

    def __init__(self, rank: int = 0, world: int = 1, cpu_group: dist.ProcessGroup | None = None) -> None:
        self.rank, self.world, self.cpu_group = rank, world, cpu_group

    @classmethod
    def from_environment(cls, backend: str | None = None, timeout_s: float = 1800) -> "Ranks":
        """Join the job torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...); one rank without it.
        On CUDA, rank r trains on its machine's device LOCAL_RANK (`environment_device`)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if torch.cuda.is_available():
            torch.cuda.set_device(environment_device())
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else None
        return cls(dist.get_rank(), dist.get_world_size(), cpu_group)

    @property
    def single(self) -> bool:
        return self.world == 1

    @property
    def leader(self) -> bool:
        """Rank 0: it owns the API, the store, the registry and the checkpoints."""
        return self.rank == 0

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in parameters if p.grad is not None]
        if self.single or not grads:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world
        for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(averaged)

    def broadcast_parameters(self, tensors: list[torch.Tensor]) -> None:
        if self.single or not tensors:
            return
        with torch.no_grad():
            flat = _flatten_dense_tensors([t.detach() for t in tensors])
            dist.broadcast(flat, 0)
            for tensor, value in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
                tensor.copy_(value)

    def commands(self, pending: list[dict] | None = None) -> list[dict]:
        """Rank 0's `pending` commands (JSON-able dicts) on every rank; [] when there are none."""
        if self.single:
            return list(pending or [])
        payload = self.broadcast_bytes(json.dumps(pending).encode() if self.leader and pending else b"")
        return json.loads(payload.decode()) if payload else []

    def broadcast_bytes(self, payload: bytes = b"") -> bytes:
        """Rank 0's `payload` on every rank (the others pass nothing): its size in a one-integer
        broadcast, the bytes only when there are any. On the CPU group."""
        if self.single:
            return payload
        size = torch.tensor([len(payload) if self.leader else 0], dtype=torch.long)
        dist.broadcast(size, 0, group=self.cpu_group)
        if size.item() == 0:
            return b""
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if self.leader else \
            torch.empty(int(size.item()), dtype=torch.uint8)
        dist.broadcast(data, 0, group=self.cpu_group)
        return data.numpy().tobytes()

    def gather(self, value: dict) -> list[dict]:
        """Every rank's `value` (a JSON-able dict), in rank order, on every rank."""
        if self.single:
            return [value]
        payload = json.dumps(value).encode()
        longest = torch.tensor([len(payload)], dtype=torch.long)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=self.cpu_group)
        data = torch.zeros(int(longest.item()), dtype=torch.uint8)
        data[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        parts = [torch.empty_like(data) for _ in range(self.world)]
        dist.all_gather(parts, data, group=self.cpu_group)
        return [json.loads(part.numpy().tobytes().rstrip(b"\0").decode()) for part in parts]

    def close(self) -> None:
        """Leave the job: a barrier first, so no rank tears its connections down while another
        still has a collective in flight (gloo then aborts the process: "terminate called without
        an active exception"), then the process group goes."""
        if self.single or not dist.is_initialized():
            return
        dist.barrier()
        dist.destroy_process_group()

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank."""
        if self.single:
            return bool(flag)
        value = torch.tensor([int(bool(flag))], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(value.item())


def environment_device() -> str:
    """The device of this rank of a torchrun job: cuda:LOCAL_RANK, or the CPU without CUDA."""
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
