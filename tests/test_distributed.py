"""`acc.engine.distributed.Ranks` on two real gloo ranks (CPU processes): gradient averaging gives
what one rank computes on the whole batch, a head added live is broadcast from rank 0, commands
reach every rank as plain data, a decision on one rank is everyone's, and one rank is a no-op."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from acc.engine.distributed import Ranks
from acc.models import build_model

MODEL = {"name": "factor_slot", "factors": ["digit", "style"], "slot_dim": 4, "channels": 8, "hidden": 8}
BATCH, STEPS, HEAD_AT = 64, 5, 3  # the head (a task added live) joins before step HEAD_AT


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(BATCH, 1, 28, 28, generator=generator)
    return images, torch.randint(0, 10, (BATCH,), generator=generator)


def train(ranks: Ranks, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """STEPS Adam steps on this rank's share of the batch; a digit head joins before HEAD_AT."""
    torch.manual_seed(0)
    model = build_model(MODEL)
    unused = torch.nn.Linear(3, 3)  # trained by nobody: must stay without a gradient
    optimizer = torch.optim.Adam([*model.parameters(), *unused.parameters()], lr=1e-3)
    head = None
    share = slice(ranks.rank * BATCH // ranks.world, (ranks.rank + 1) * BATCH // ranks.world)
    for step in range(STEPS):
        pending = [{"kind": "add_head", "seed": 7}] if ranks.leader and step == HEAD_AT else []
        for command in ranks.commands(pending):
            torch.manual_seed(command["seed"] + ranks.rank)  # differs per rank until broadcast
            head = torch.nn.Linear(4, 10)
            ranks.broadcast_parameters(list(head.parameters()))
            optimizer.add_param_group({"params": list(head.parameters())})
        out = model(images[share])
        loss = F.binary_cross_entropy_with_logits(out["recon"], images[share])
        if head is not None:
            loss = loss + F.cross_entropy(head(out["latent"][:, :4]), labels[share])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ranks.average_gradients([p for group in optimizer.param_groups for p in group["params"]])
        assert unused.weight.grad is None
        optimizer.step()
    return {**{f"model.{k}": v for k, v in model.state_dict().items()},
            **{f"head.{k}": v for k, v in head.state_dict().items()}}


def rank_main(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    ranks = Ranks(rank, world)
    try:
        torch.set_num_threads(1)
        images, labels = batch()
        weights = train(ranks, images, labels)
        decided = ranks.any(rank == 1)  # only rank 1 says yes
        undecided = ranks.any(False)
        torch.save(weights, Path(folder) / f"rank{rank}.pt")
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps({"any": decided, "none": undecided}))
    finally:
        ranks.close()


def test_two_ranks_reach_the_parameters_of_one_rank_on_the_whole_batch(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(rank_main, args=(2, str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    torch.set_num_threads(1)
    alone = train(Ranks(), *batch())
    for rank in (0, 1):
        weights = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert weights.keys() == alone.keys()
        for name, value in alone.items():
            assert torch.allclose(weights[name], value, atol=1e-5, rtol=0), (rank, name,
                                                                              float((weights[name] - value).abs().max()))
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"any": True, "none": False}


def test_one_rank_is_a_no_op():
    ranks = Ranks()
    ranks.close()  # nothing to leave
    assert ranks.single and ranks.leader
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    ranks.average_gradients([p])
    ranks.broadcast_parameters([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0)) and torch.equal(p.detach(), torch.ones(3))
    assert ranks.commands([{"kind": "x"}]) == [{"kind": "x"}] and ranks.commands() == []
    assert ranks.any(True) and not ranks.any(False)
