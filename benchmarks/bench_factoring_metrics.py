"""How long do the factoring scores take on a checkpoint-sized code?

Run by hand: `python benchmarks/bench_factoring_metrics.py`. Synthetic codes of 5,000 samples x 32
dimensions (four slots of 8; thickness, slant and digit class each in its own slot, a leak of
thickness into the style slot), the contexts the evaluator uses (five digit-class groups, three
sources, tertiles of the other factor: 9 to 11 per concept). Times, best of 5: `ufr_report` (3
seeds), `mig`, `dci(importance="lasso")`, and once `dci(importance="gbt")`, disentanglement_lib's
choice, printed as a ratio to the fast path. Target: ufr_report well under 1 s.
"""

from __future__ import annotations

import time

import numpy as np

from acc.eval.literature import dci, mig
from acc.eval.ufr import Concept, ContextFamily, ufr_report

N, SLOT = 5000, 8
SLOTS = {"digit": slice(0, 8), "thickness": slice(8, 16), "slant": slice(16, 24), "style": slice(24, 32)}
TRUE = {"thickness": "thickness", "slant": "slant", "digit": "digit"}


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    thickness, slant = rng.standard_normal(N), rng.standard_normal(N)
    digit, source = rng.integers(0, 10, N), rng.integers(0, 3, N)
    z = 0.3 * rng.standard_normal((N, 32))
    z[:, SLOTS["digit"]] += rng.standard_normal((10, SLOT))[digit]
    z[:, SLOTS["thickness"]] += thickness[:, None] * rng.standard_normal(SLOT)
    z[:, SLOTS["slant"]] += slant[:, None] * rng.standard_normal(SLOT)
    z[:, SLOTS["style"]] += 0.3 * thickness[:, None] * rng.standard_normal(SLOT)
    concepts = [Concept("thickness", thickness, "continuous"), Concept("slant", slant, "continuous"),
                Concept("digit", digit, "class")]

    def tertiles(v, name):
        lo, hi = np.quantile(v, [1 / 3, 2 / 3])
        return ContextFamily(f"{name} tertile", {"low": v <= lo, "mid": (v > lo) & (v <= hi), "high": v > hi})

    digits = ContextFamily("digit class", {f"{a}-{a + 1}": (digit == a) | (digit == a + 1) for a in range(0, 10, 2)})
    sources = ContextFamily("source", {f"source {s}": source == s for s in range(3)})
    contexts = {"thickness": [digits, sources, tertiles(slant, "slant")],
                "slant": [digits, sources, tertiles(thickness, "thickness")],
                "digit": [sources, tertiles(thickness, "thickness"), tertiles(slant, "slant")]}
    return z, concepts, contexts


def best_of(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    z, concepts, contexts = data()
    ufr_s = best_of(lambda: ufr_report(z, SLOTS, concepts, contexts, assignment=TRUE, seeds=3))
    hungarian_s = best_of(lambda: ufr_report(z, SLOTS, concepts, contexts, assignment=None, seeds=3))
    mig_s = best_of(lambda: mig(z, concepts))
    lasso_s = best_of(lambda: dci(z, concepts))
    start = time.perf_counter()
    gbt = dci(z, concepts, importance="gbt")
    gbt_s = time.perf_counter() - start
    fast = ufr_s + mig_s + lasso_s
    report = ufr_report(z, SLOTS, concepts, contexts, assignment=TRUE, seeds=3)
    print(f"codes {z.shape}, contexts per concept "
          f"{ {c: len(v['contexts']) for c, v in report['concepts'].items()} }")
    print(f"ufr_report (3 seeds, Hungarian)    {hungarian_s * 1000:8.1f} ms")
    print(f"ufr_report (3 seeds, given)        {ufr_s * 1000:8.1f} ms   UFR {report['ufr']:.3f}")
    print(f"mig                                {mig_s * 1000:8.1f} ms")
    print(f"dci lasso                          {lasso_s * 1000:8.1f} ms   D {dci(z, concepts)['disentanglement']:.3f}")
    print(f"ufr + mig + dci(lasso)             {fast * 1000:8.1f} ms")
    print(f"dci gbt                            {gbt_s * 1000:8.1f} ms   D {gbt['disentanglement']:.3f}")
    print(f"gbt / (ufr + mig + lasso)          {gbt_s / fast:8.1f} x")


if __name__ == "__main__":
    main()
