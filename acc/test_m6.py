"""M6 acceptance: `python -m acc.test_m6 [--trainer URL] [--token T] [--seed N ...] [--steps N]`.

Without a URL it starts its own trainer (`acc trainer --fresh --seed N` in a temporary workspace,
each `--seed` in its own, one after the other). Through the API, as a user would, it runs the recipe
`expand_demo` (POST /api/recipes/expand_demo/run): a small Factor-Slot model (one hidden layer in each
slot's MLP) with reconstruction and digit classification trains to `expand_base`; three forks of
it train the same number of steps: `expand_control` (unexpanded), `expand_random` (grown at
`slots:1`, the new layer randomly initialised) and `expand_identity` (the same place, identity). Each
node is then loaded and evaluated (POST /api/eval: the digit task's accuracy and loss on the
validation digits, which training never sees). The checks (PASS/FAIL each):
- the base reaches a held-out digit accuracy of at least 85%;
- right after a random expansion the accuracy is lower than the base's (the roadmap's drop), and
  after training it is higher than the base's;
- right after an identity expansion accuracy and loss equal the base's (to 4 and 6 decimals), and
  after training the accuracy is higher than the base's;
- the same identity expansion done by hand (GET /api/model/layers, POST /api/model/expand on the
  loaded base) is listed with its parameter count, and leaves accuracy and loss as they were.
Then, as the issue asks, the three forks side by side: whether each expanded branch ends better
than the control that kept training the model as it was. That comparison is printed, never bent
into a PASS; with several seeds a summary line per seed follows.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from acc.acceptance import Checklist, run_per_seed, seed_parser, wait_job
from acc.engine.trainer import EngineConfig
from acc.ui.client import TrainerClient

RECIPE = "expand_demo"
TASK = "digit"
BASE_ACCURACY = 0.85  # "trains to a reasonable accuracy"
VAL_FRACTION, EVAL_SAMPLES = EngineConfig.val_fraction, EngineConfig.eval_samples  # a trainer's defaults
FORKS = ("expand_control", "expand_random", "expand_identity")


@dataclass
class Measured:
    accuracy: float | None
    loss: float | None
    step: int
    params: int | None = None


@dataclass
class Result:
    code: int
    seed: int | None
    checklist: Checklist
    nodes: dict[str, Measured] = field(default_factory=dict)


def measure(client: TrainerClient, checkpoint: dict) -> Measured:
    """Load a checkpoint and evaluate it (the digit task on its validation digits)."""
    state = client.load_checkpoint(checkpoint["id"])
    values = client.evaluate()["results"].get(TASK, {})
    return Measured(values.get("accuracy"), values.get("loss"), state["step"], client.model_layers()["params"])


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _child(checkpoints: list[dict], parent: str, init: str) -> dict | None:
    return next((c for c in checkpoints if c["parent"] == parent and (c.get("expansion") or {}).get("init") == init), None)


def run(url: str, token: str | None, seed: int | None = None, params: dict | None = None,
        recipe_timeout: float = 3600) -> Result:
    c = Checklist()
    nodes: dict[str, Measured] = {}
    with TrainerClient(url, token, timeout=120) as client:
        c.check("trainer reachable", client.health()["ok"], url + (f", seed {seed}" if seed is not None else ""))
        clock = time.monotonic()
        job = wait_job(client, client.run_recipe(RECIPE, params or {})["id"], recipe_timeout, RECIPE)
        if not c.check(f"recipe {RECIPE} ran through the API", job["status"] == "done",
                       f"{job['status']} in {time.monotonic() - clock:.0f} s {job.get('error') or ''}".strip()):
            return Result(1, seed, c)
        checkpoints = client.checkpoints()
        named = {row["name"]: row for row in checkpoints}  # the newest of each name
        base = named.get("expand_base")
        grown = {init: _child(checkpoints, base["id"], init) if base else None for init in ("random", "identity")}
        missing = [n for n in ("expand_base", *FORKS) if n not in named] + [f"{i} expansion" for i, g in grown.items() if g is None]
        if not c.check("the tree holds the base, its three forks and both expansion nodes", not missing,
                       f"missing {missing}" if missing else ", ".join(["expand_base", *FORKS])):
            return Result(1, seed, c)
        for name in ("expand_base", *FORKS):
            nodes[name] = measure(client, named[name])
        # The digits an evaluation sees: the validation split of MNIST's training digits (the
        # trainer's defaults: a tenth of them, at most 1,000).
        mnist = next(d for d in client.datasets() if d["name"] == "mnist")
        validation = min(EVAL_SAMPLES, round(VAL_FRACTION * mnist["n"]))
        for init, row in grown.items():
            nodes[f"{init} expansion"] = measure(client, row)

        b = nodes["expand_base"]
        c.check(f"base: held-out digit accuracy at least {BASE_ACCURACY:.0%}",
                b.accuracy is not None and b.accuracy >= BASE_ACCURACY, f"{_pct(b.accuracy)} at step {b.step}, {b.params:,} parameters")
        r0, r1 = nodes["random expansion"], nodes["expand_random"]
        c.check("random expansion: accuracy right after is lower than the base's",
                r0.accuracy is not None and r0.accuracy < b.accuracy,
                f"{_pct(r0.accuracy)} vs {_pct(b.accuracy)}; loss {r0.loss:.4f} vs {b.loss:.4f}; "
                f"{b.params:,} -> {r0.params:,} parameters")
        c.check("random expansion: after training, accuracy exceeds the base's",
                r1.accuracy is not None and r1.accuracy > b.accuracy, f"{_pct(r1.accuracy)} vs {_pct(b.accuracy)} at step {r1.step}")
        i0, i1 = nodes["identity expansion"], nodes["expand_identity"]
        c.check("identity expansion: no drop (accuracy and loss as the base's, to 4 and 6 decimals)",
                i0.accuracy is not None and round(i0.accuracy, 4) == round(b.accuracy, 4)
                and round(i0.loss, 6) == round(b.loss, 6),
                f"accuracy {i0.accuracy:.4f} vs {b.accuracy:.4f}, loss {i0.loss:.6f} vs {b.loss:.6f}; "
                f"{b.params:,} -> {i0.params:,} parameters")
        c.check("identity expansion: after training, accuracy exceeds the base's",
                i1.accuracy is not None and i1.accuracy > b.accuracy, f"{_pct(i1.accuracy)} vs {_pct(b.accuracy)} at step {i1.step}")

        # The same expansion by hand, as from the dashboard: the place listed, then POST /api/model/expand.
        client.load_checkpoint(base["id"])
        layers = client.model_layers()
        where = (grown["identity"].get("expansion") or {}).get("where")
        point = next((p for p in layers["points"] if p["where"] == where), None)
        c.check(f"GET /api/model/layers lists {where!r} with the parameters it adds",
                point is not None and point["params"] > 0,
                f"{len(layers['points'])} places; {where}: +{point['params'] if point else '?'} parameters")
        answer = client.expand_model(where, "identity")
        after = client.evaluate()["results"].get(TASK, {})
        added = answer["checkpoint"]["expansion"]
        c.check("POST /api/model/expand: a child of the base, same accuracy and loss, parameters counted",
                answer["checkpoint"]["parent"] == base["id"] and round(after.get("accuracy", -1), 4) == round(b.accuracy, 4)
                and round(after.get("loss", -1), 6) == round(b.loss, 6)
                and added["params_after"] == added["params_before"] + (point["params"] if point else 0),
                f"checkpoint {answer['checkpoint']['name']!r}; accuracy {after.get('accuracy', float('nan')):.4f}, "
                f"loss {after.get('loss', float('nan')):.6f}; {added['params_before']:,} -> {added['params_after']:,}")

    control = nodes["expand_control"]
    print(f"\nafter {control.step - b.step} more steps from the base (step {b.step}, {_pct(b.accuracy)}):")
    for name in FORKS:
        m = nodes[name]
        print(f"  {name:<16} accuracy {_pct(m.accuracy):>7}  loss {m.loss:.4f}  parameters {m.params:,}")
    for name in ("expand_random", "expand_identity"):
        a, k = nodes[name].accuracy, control.accuracy
        # One standard error of a difference of two accuracies, each over `validation` digits.
        se = math.sqrt((a * (1 - a) + k * (1 - k)) / validation)
        verdict = "ends better than" if a > k else "does NOT end better than"
        print(f"compare  {name} {verdict} the control ({_pct(a)} vs {_pct(k)}; difference "
              f"{100 * (a - k):+.2f} points, one standard error {100 * se:.2f} over {validation} validation digits)",
              flush=True)
    if control.loss > b.loss:  # not a check: what explains a fork that ends below the base
        print(f"note  the control's validation loss rose from {b.loss:.4f} to {control.loss:.4f} over the same steps: "
              f"past the base the model overfits, expanded or not (MNIST's training split holds {mnist['n']:,} "
              f"digits here, validation included)", flush=True)
    print(f"{'ALL PASS' if not c.failed else f'{c.failed} FAILED'}{f' (seed {seed})' if seed is not None else ''}",
          flush=True)
    return Result(0 if not c.failed else 1, seed, c, nodes)


def summary(results: Sequence[Result]) -> str:
    head = f"{'seed':>5} {'base':>8} {'control':>8} {'random':>8} {'identity':>9}  verdict"
    lines = [head]
    for r in results:
        acc = [_pct(r.nodes[n].accuracy) if n in r.nodes else "n/a" for n in ("expand_base", *FORKS)]
        lines.append(f"{r.seed!s:>5} {acc[0]:>8} {acc[1]:>8} {acc[2]:>8} {acc[3]:>9}  "
                     f"{'PASS' if r.code == 0 else f'{r.checklist.failed} FAILED'}")
    complete = [r for r in results if all(r.nodes.get(n) and r.nodes[n].accuracy is not None
                                          for n in ("expand_base", *FORKS))]
    if len(complete) > 1:  # what the seeds say together: the mean, and each branch against the control
        means = [statistics.mean(r.nodes[n].accuracy for r in complete) for n in ("expand_base", *FORKS)]
        lines.append(f"{'mean':>5} " + " ".join(f"{_pct(m):>{w}}" for m, w in zip(means, (8, 8, 8, 9))))
        for name in ("expand_random", "expand_identity"):
            gains = [100 * (r.nodes[name].accuracy - r.nodes["expand_control"].accuracy) for r in complete]
            spread = statistics.stdev(gains) / math.sqrt(len(gains))
            lines.append(f"{name} - control over {len(gains)} seeds: {statistics.mean(gains):+.2f} points "
                         f"(standard error {spread:.2f}; better at {sum(g > 0 for g in gains)} of {len(gains)} seeds)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = seed_parser(__doc__)
    parser.add_argument("--steps", type=int, help="steps of the base and of each fork (default: the recipe's)")
    args = parser.parse_args(argv)
    params = {"base_steps": args.steps, "steps": args.steps} if args.steps else {}
    out = Path(tempfile.mkdtemp(prefix="acc-m6-"))
    return run_per_seed(args, lambda url, token, seed, folder: run(url, token, seed=seed, params=params), out, summary)


if __name__ == "__main__":
    sys.exit(main())
