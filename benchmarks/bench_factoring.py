"""The whole factoring report of one checkpoint, and what an evaluation costs the training beside it.

    python benchmarks/bench_factoring.py [--train-steps 300] [--rounds 5] [--window 10] [--device cpu]
                                         [--eval-device cpu] [--workspace DIR]

One workspace (a temporary one unless `--workspace`), the default Factor-Slot model trained
`--train-steps` steps of reconstruction and saved as a checkpoint. A first factoring job builds the
held-out sets and the digit classifier (once per workspace, cached; not measured). Then, in the
same process:

1. training steps/s of the Engine training a ReconstructionTask alone on every core, alone once the
   worker has its share of the cores, and while FactoringService
   jobs evaluate checkpoints beside it, one after another for `--window` seconds (each job a new
   checkpoint, so that none is answered from the store; the "alone" window as long as the one
   before it), the jobs run two ways: in the trainer's process (threads of the same process), and
   in the evaluation worker process on `--eval-device` (M4). Alternating, so that machine noise
   hits all three alike; printed as `beside / alone`, the median over `--rounds`. Measured first,
   so that no work of the main thread (parts 2 and 3) lingers beside the "alone" rounds;
2. `FactoringEvaluator.evaluate` on the first checkpoint, training stopped (UFR with its parts, MIG,
   DCI with lasso, traversals, sort-by-activation, attention): the best of `--rounds`, with stages;
3. next to it, DCI with scikit-learn's gradient-boosted trees (disentanglement_lib's choice) on
   the same codes and concepts, `acc.eval.literature.dci(codes, concepts, importance="gbt")`, once;
   printed as `whole report / dci(gbt)`.

It says which held-out sets ran: 5,000 images on full MNIST (3,000 test digits + 1,000 + 1,000
generated), 3,000 on the bundled 5k fallback (1,000 + 1,000 + 1,000).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from acc.engine import EngineConfig
from acc.engine.checkpoint import read_checkpoint
from acc.engine.session import Session
from acc.eval.evaluator import MEASURED, FactoringEvaluator, supervised_slots, named_slots
from acc.eval.literature import dci
from acc.eval.ufr import Concept
from acc.models import build_model


def load_model(row: dict, device: str) -> tuple[torch.nn.Module, list[dict]]:
    """The checkpoint's model (as the factoring job builds it) and its recorded tasks."""
    data = read_checkpoint(row["path"])
    model = build_model(data.meta["model"])
    model.load_state_dict(data.model_state())
    return model.to(device), data.meta.get("tasks", [])


@torch.no_grad()
def codes_and_concepts(evaluator: FactoringEvaluator, model: torch.nn.Module,
                       tasks: list[dict]) -> tuple[np.ndarray, list[Concept]]:
    """The held-out codes and the concepts the evaluator scores them on (the same images, in order)."""
    model.eval()
    device = next(model.parameters()).device
    batch = evaluator.config.batch
    codes = torch.cat([model(evaluator.images[i:i + batch].to(device))["latent"].float().cpu()
                       for i in range(0, len(evaluator.images), batch)]).numpy().astype(np.float64)
    concepts = [Concept(name, evaluator.measured[name], "continuous") for name in MEASURED]
    if "digit" in supervised_slots(tasks, named_slots(model)):
        concepts.append(Concept("digit", evaluator.labels, "class"))
    return codes, concepts


def steps_per_s(engine, seconds: float) -> float:
    start_step, start = engine.step, time.perf_counter()
    time.sleep(seconds)
    return (engine.step - start_step) / (time.perf_counter() - start)


def steps_per_s_beside(session, engine, window: float, tag: str) -> tuple[float, float, int]:
    """(training steps/s while factoring jobs evaluate new checkpoints one after another, the
    seconds that took, the number of jobs): jobs until `window` seconds have passed."""
    start_step, start, jobs = engine.step, time.perf_counter(), 0
    while time.perf_counter() - start < window:
        checkpoint = engine.save_checkpoint(f"bench-{tag}-{jobs}")  # new weights: a new report key
        job = session.factoring.start(checkpoint["id"])
        job.done.wait(3600)
        if job.status != "done":
            raise RuntimeError(f"the factoring job {job.status}: {job.error}")
        if job.result.get("cached"):
            raise RuntimeError("the factoring job was answered from the store; nothing was measured")
        jobs += 1
    seconds = time.perf_counter() - start
    return (engine.step - start_step) / seconds, seconds, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=300, help="steps before the checkpoint is saved")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds of back-to-back factoring jobs per round (and as long alone)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-device", default="cpu", help="the evaluation worker's device")
    parser.add_argument("--workspace", type=Path, help="default: a temporary one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="acc-bench-factoring-") as tmp:
        root = args.workspace or Path(tmp)
        config = EngineConfig(device=args.device, eval_every=0, autosave_every_s=0)
        with Session.open(root, config, watch=False) as session:
            engine = session.engine
            engine.add_task("ReconstructionTask")
            clock = time.perf_counter()
            engine.train(args.train_steps, timeout=None)
            train_s = time.perf_counter() - clock
            row = session.store.checkpoint(engine.save_checkpoint("bench")["id"])
            print(f"model {engine.config.model['name']} on {engine.device}, torch threads {torch.get_num_threads()}; "
                  f"{args.train_steps} training steps in {train_s:.1f} s ({args.train_steps / train_s:.1f} steps/s)")

            # The training part first, so that nothing the main thread computed later (the evaluator
            # below) runs beside the "alone" rounds. The first job builds the held-out sets and the
            # classifier on the job's thread, as a trainer does; it is not measured.
            clock = time.perf_counter()
            first = session.factoring.start(row["id"])
            first.done.wait(3600)
            if first.status != "done":
                raise RuntimeError(f"the factoring job {first.status}: {first.error}")
            evaluator = session.factoring.evaluator()
            sets = evaluator.sets.info
            print(f"held-out sets ({sets['mnist']}): {len(evaluator.images):,} images {sets['sizes']} "
                  f"({'full MNIST' if sets['mnist'] == 'mnist-idx' else 'the 5k fallback: fewer than 5,000'}); "
                  f"built with the classifier, and a first report, in {time.perf_counter() - clock:.1f} s")

            # Training alone on every core, before the worker takes its share of them.
            engine.start()
            try:
                steps_per_s(engine, 3.0)  # warm-up
                full = [steps_per_s(engine, args.window) for _ in range(args.rounds)]
            finally:
                engine.stop()
            full_threads = torch.get_num_threads()
            engine.set_eval_device(args.eval_device)
            worker = engine.eval_worker
            in_process, in_worker = (lambda: None), (lambda: worker)
            session.factoring.worker = in_worker
            warm = session.factoring.start(engine.save_checkpoint("bench-worker-warm-up")["id"])
            warm.done.wait(3600)  # the worker builds its evaluator once (read from the cache)
            engine.start()  # trains until stopped; the jobs evaluate beside it
            try:
                steps_per_s(engine, 3.0)  # warm-up
                alone, beside, windows = [], {"process": [], "worker": []}, []
                for round_ in range(args.rounds):
                    for mode, route in (("process", in_process), ("worker", in_worker)):
                        session.factoring.worker = route
                        rate, seconds, jobs = steps_per_s_beside(session, engine, args.window, f"{mode}{round_}")
                        beside[mode].append(rate)
                        windows.append((mode, seconds, jobs))
                    alone.append(steps_per_s(engine, seconds))
            finally:
                engine.stop()

            model, tasks = load_model(row, str(engine.device))
            times, report = [], None
            for _ in range(args.rounds):
                clock = time.perf_counter()
                report, pictures = evaluator.evaluate(model, tasks)
                times.append(time.perf_counter() - clock)
            whole = min(times)
            codes, concepts = codes_and_concepts(evaluator, model, tasks)
            clock = time.perf_counter()
            gbt = dci(codes, concepts, importance="gbt")
            gbt_s = time.perf_counter() - clock

            stages = "  ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in report["timing"].items())
            print(f"FactoringEvaluator.evaluate (best of {args.rounds})  {whole:8.2f} s   UFR {report['ufr']:.3f}, "
                  f"{len(pictures)} figures; last round's stages: {stages}")
            print(f"dci(importance='gbt'), same codes {list(codes.shape)}, {len(concepts)} concepts "
                  f"{gbt_s:8.2f} s   D {gbt['disentanglement']:.3f} (the report's lasso D {report['dci']['disentanglement']:.3f})")
            print(f"whole report / dci(gbt)                {whole / gbt_s:8.2f} x")
            print(f"training alone, no worker ({full_threads} threads)   {statistics.median(full):8.2f} steps/s   "
                  f"rounds {', '.join(f'{a:.2f}' for a in full)}")
            print(f"training alone, a worker set ({engine.roles()['train_threads']} threads) {statistics.median(alone):8.2f} steps/s   "
                  f"rounds {', '.join(f'{a:.2f}' for a in alone)}")
            for mode, where in (("process", "in the trainer's process"), ("worker", f"in the worker on {args.eval_device}")):
                rates = beside[mode]
                ratio = statistics.median(b / a for a, b in zip(alone, rates))
                print(f"training beside factoring jobs {where}: {statistics.median(rates):.2f} steps/s   "
                      f"rounds {', '.join(f'{b:.2f}' for b in rates)} "
                      f"({', '.join(f'{j} jobs in {t:.1f} s' for m, t, j in windows if m == mode)})")
                print(f"   beside / alone (median of rounds)   {ratio:8.2f} x")
            share = worker.threads / (os.cpu_count() or 1)
            print(f"the worker's torch threads: {worker.threads} of {os.cpu_count()} cores; training beside the "
                  f"worker / training alone with no worker: {statistics.median(beside['worker']) / statistics.median(full):.2f} x "
                  f"(the target: at least {1 - share:.2f} x, i.e. slowed by no more than the CPU the worker takes)")

if __name__ == "__main__":
    main()
