"""Data-parallel training in the engine (M4, mode 2): what the loop calls at a step boundary.

A mixin of `Engine` (acc/engine/trainer.py). Rank 0 is the trainer everyone talks to: it owns the
API, the store, the registry and the checkpoints, and applies commands as always. The other ranks
(`acc.engine.follower.Follower`) only compute. At every step boundary rank 0 tells them what changed,
as plain data through `Ranks` (acc/engine/distributed.py):

- `rebuild`: after a command that changes what trains (a task added or removed, a new model, a
  checkpoint loaded, the model grown; see `REBUILDS`) rank 0 sends its model, task specs and
  optimizer settings as a checkpoint's meta, the source text of every task type it uses (ranks on
  other machines need not share a disk), then the weights and Adam's state as safetensors bytes.
  Every rank then holds rank 0's parameters and optimizer state: the broadcast after a structural
  change or a load. Replaying each command on every rank instead would need every command (and
  every file it reads) to exist on every rank.
- `control`: the status (a rank steps exactly when rank 0 does), the learning rate, each task's
  weight and whether it is enabled.
- `close`: the job is over.

The one-integer broadcast of `Ranks.commands` runs every step; the rest only when there is
something to say. While training is paused or idle, rank 0 sends an empty boundary every
`HEARTBEAT_S`: the others sit in a collective for at most that long, never near gloo's 30-minute
timeout, and rank 0 waits for commands on its own queue, not in a collective.

In the step, gradients are averaged in one flat all-reduce (`Ranks.average_gradients`, which says
why not `DistributedDataParallel`) before the norm is taken, so a non-finite gradient is seen by
every rank alike; a task that raises or gives a non-finite loss on any rank is disabled on all of
them (`_agree_on_errors`). Each rank draws its own batches: its streams are seeded with its rank.
With one rank every call here returns at once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch.distributed as dist

from acc.engine.checkpoint import pack_tensors
from acc.engine.distributed import Ranks
from acc.engine.errors import error_text
from acc.engine.launch import JOIN_TIMEOUT_S, rank_devices, start_ranks, stop_processes

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
REBUILDS = frozenset({"add_task", "remove_task", "set_model", "load_checkpoint", "expand"})


class DataParallel:
    """Rank 0's side of the step boundary and the collective decisions; see the module docstring."""

    ranks: Ranks = Ranks()
    _generation = 0  # bumped by every command in REBUILDS
    _sent_generation = -1  # what the other ranks hold (-1: nothing yet)
    _sent_control: dict | None = None

    _rank_processes: list = []  # the ranks this trainer spawned (none: one rank, or started by torchrun)

    # ---- public, thread-safe ---------------------------------------------------------------------
    def set_ranks(self, world: int) -> dict:
        """Train on `world` ranks on this box from the next step on (1: this device alone). The
        ranks are restarted from the live state: every one gets rank 0's weights and Adam's state."""
        return self.call("set_ranks", world=world, timeout=JOIN_TIMEOUT_S + 60)

    def rank_fingerprints(self) -> list[dict]:
        """`fingerprints()` of every rank, in rank order: equal while the ranks are in step."""
        return self.call("rank_fingerprints")

    def mode(self) -> dict:
        return {"mode": "single" if self.ranks.single else "ddp", "ranks": self.ranks.world}

    # ---- commands ----------------------------------------------------------------------------
    def _do_set_ranks(self, world: int) -> dict:
        if not isinstance(world, int) or isinstance(world, bool) or world < 1:
            raise ValueError(f"ranks must be a positive integer, got {world!r}")
        if world == self.ranks.world:
            return self.roles()
        if not self.ranks.single and not self._rank_processes:
            raise ValueError(f"this job's {self.ranks.world} ranks were started by torchrun: restart it with "
                             "another --nproc-per-node to change them")
        devices = rank_devices(self.device, world)
        if self.device.type == "cpu" and world > (os.cpu_count() or 1):
            raise ValueError(f"{world} ranks on the CPU need {world} cores; this machine has {os.cpu_count()}")
        self._end_ranks()
        if world > 1:
            self.ranks, self._rank_processes = start_ranks(world, self.config, str(self.workspace.root), devices)
        self._share_cores()
        self._event("devices", f"data parallel on {world} ranks" if world > 1 else "training on one device",
                    **self.mode())
        return self.roles()

    def _do_rank_fingerprints(self) -> list[dict]:
        return self._share_boundary(fingerprints=True)

    def _end_ranks(self) -> None:
        """Tell the other ranks that the job is over, leave it, and wait for the ranks spawned here."""
        if self.ranks.single:
            return
        try:
            self.ranks.commands([{"kind": "close"}])
            self.ranks.close()
        except Exception as e:  # a rank died since the last boundary: there is no one left to tell
            log.warning("ending the data-parallel job: %s", error_text(e))
            self._abandon_job()
            return
        self._left_job()

    def _lose_ranks(self, error: Exception) -> None:
        """A collective failed (a rank died, or a step failed here and the ranks are out of step):
        the job ends and training goes on here alone, paused, the state as it was."""
        world = self.ranks.world
        self._abandon_job()
        self._share_cores()
        self._set_status("paused")
        self._emit_error(None, f"data-parallel training on {world} ranks stopped at step {self.step} "
                               f"({error_text(error)}); training is paused and continues on {self.device} alone")

    def _abandon_job(self) -> None:
        """Leave a job whose ranks are out of step, without a collective: none would complete."""
        try:
            dist.destroy_process_group()
        except Exception:  # the group is broken already: there is nothing else to undo
            log.debug("destroying a broken process group", exc_info=True)
        for process in self._rank_processes:
            process.terminate()
        self._left_job()

    def _left_job(self) -> None:
        stop_processes(self._rank_processes)
        self.ranks, self._rank_processes = Ranks(), []
        self._sent_generation, self._sent_control = -1, None

    def _idle_wait(self) -> float | None:
        """How long the loop waits for a command while not training (None: until one comes)."""
        return None if self.ranks.single else HEARTBEAT_S

    def _applied(self, kind: str) -> None:
        if kind in REBUILDS:
            self._generation += 1

    def _share_boundary(self, fingerprints: bool = False) -> list[dict] | None:
        """Rank 0, between two steps: tell the other ranks what changed (nothing alone). With
        `fingerprints`, every rank's fingerprints of its tensors, in rank order."""
        if self.ranks.single:
            return [self._do_fingerprints()] if fingerprints else None
        messages, tensors = [], b""
        if self._generation != self._sent_generation:
            weights, optimizer, meta = self._snapshot()
            files = {self.registry.file_of(type(t.task).__name__) for t in self.tasks.values()}
            sources = {Path(file).name: Path(file).read_text() for file in sorted(files)}
            messages.append({"kind": "rebuild", "meta": meta, "sources": sources})
            tensors = join_blobs(*pack_tensors(weights, optimizer))
            self._sent_generation = self._generation
        control = self._control()
        if control != self._sent_control:
            messages.append({"kind": "control", **control})
            self._sent_control = control
        if fingerprints:  # in the same boundary: a follower steps only after the whole of one
            messages.append({"kind": "fingerprints"})
        self.ranks.commands(messages)
        if tensors:
            self.ranks.broadcast_bytes(tensors)
        return self.ranks.gather(self._do_fingerprints()) if fingerprints else None

    def _control(self) -> dict:
        return {"status": self.status, "lr": self.optimizer.param_groups[0]["lr"],
                "tasks": {name: [t.task.weight, t.enabled] for name, t in self.tasks.items()}}

    def _agree_on_errors(self, errors: dict[str, str]) -> dict[str, str]:
        """The tasks that failed this step on any rank, each with the first rank's message."""
        if self.ranks.single or not self.ranks.any(bool(errors)):
            return errors
        agreed: dict[str, str] = {}
        for rank, found in enumerate(self.ranks.gather(errors)):
            for name, message in found.items():
                agreed.setdefault(name, message if rank == self.ranks.rank else f"on rank {rank}: {message}")
        return agreed

    def _stream_name(self, dataset: str) -> str:
        """What a dataset's batch stream is seeded by: rank 0 as on one device, the others apart."""
        return dataset if self.ranks.leader else f"{dataset}#rank{self.ranks.rank}"


def join_blobs(first: bytes, second: bytes) -> bytes:
    """Two blobs in one broadcast: the first one's length (8 bytes), then both."""
    return len(first).to_bytes(8, "little") + first + second


def split_blobs(data: bytes) -> tuple[bytes, bytes]:
    size = int.from_bytes(data[:8], "little")
    return data[8:8 + size], data[8 + size:]
