"""UFR, the concept x context transfer score of a latent code (DESIGN §7), on numpy arrays only.

`ufr_report(codes, slots, concepts, contexts)` asks, for each known concept `c` (thickness, slant,
digit class, ...) and its assigned latent group `S(c)`:

- is `c` readable from `S(c)` at all (`I`, informativeness),
- does a probe fitted in one context still read it in another (`tau`, transfer), and
- is it in `S(c)` only, not also in some other single slot (`L`, locality),

and combines them as `UFR_c = (I * tau * L) ** (1/3)`, `UFR` = the mean over concepts.

Held-out. Seed `s` (0 .. seeds-1) draws a random half of all N samples with
`numpy.random.default_rng(s)`: the probe is fitted on that half and scored on the other, so even
the diagonal `P[A, A]` is out of sample. `P_c[A, B]` = fit on `A` and the fit half, score on `B`
and the score half, averaged over the seeds. Only pairs of contexts within one family are defined
(`None` elsewhere in `P`). A context with fewer than `MIN_GROUP` (10) samples in either half of any
seed is left out, with a note.

The probe (a ridge, refitted per context and seed) and the information scale are in `probes`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from acc.eval import probes

try:  # ships with scikit-learn; the probes are many small products, fastest on one BLAS thread
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

MIN_GROUP = 10  # fewest samples of a context in the fit half and in the score half


@dataclass(frozen=True)
class Concept:
    """A known factor of the data: `values` [N], float for "continuous", class labels 0..m-1 for "class"."""

    name: str
    values: np.ndarray
    kind: Literal["continuous", "class"]


@dataclass(frozen=True)
class ContextFamily:
    """A partition (or part of one) of the samples: group name -> bool mask [N]; groups are disjoint."""

    name: str
    groups: dict[str, np.ndarray]


# ---- validation --------------------------------------------------------------------------------
def check_codes(codes, least: int) -> np.ndarray:
    """Codes [N, D] as float64, or a ValueError saying what is wrong (also used by `literature`)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(f"codes must be a 2-d array [N, D], got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.number) or np.issubdtype(codes.dtype, np.complexfloating):
        raise ValueError(f"codes must be real numbers, got dtype {codes.dtype}")
    codes = codes.astype(np.float64)
    if codes.shape[0] < least:
        raise ValueError(f"codes has {codes.shape[0]} samples; at least {least} are needed")
    if not np.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")
    return codes


def check_concepts(concepts: list[Concept], n: int) -> list[str]:
    """The concepts' names, or a ValueError saying what is wrong (also used by `literature`)."""
    if not concepts:
        raise ValueError("concepts is empty")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise ValueError(f"concept names must be unique, got {names}")
    for c in concepts:
        values = np.asarray(c.values)
        if values.shape != (n,):
            raise ValueError(f"concept {c.name!r} has values of shape {values.shape}; codes have {n} samples")
        if c.kind == "continuous":
            if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values.astype(np.float64)).all():
                raise ValueError(f"concept {c.name!r}: continuous values must be finite numbers")
        elif c.kind == "class":
            if not np.issubdtype(values.dtype, np.number):
                raise ValueError(f"concept {c.name!r}: class labels must be integers 0..m-1")
            fv = values.astype(np.float64)
            if not np.isfinite(fv).all() or (fv != np.round(fv)).any() or fv.min() < 0:
                raise ValueError(f"concept {c.name!r}: class labels must be integers 0..m-1")
            if len(np.unique(fv)) < 2:
                raise ValueError(f"concept {c.name!r} has a single class; it needs at least two")
        else:
            raise ValueError(f"concept {c.name!r}: kind must be 'continuous' or 'class', got {c.kind!r}")
    return names


def _check_inputs(codes, slots, concepts, contexts, assignment, seeds):
    codes = check_codes(codes, 4 * MIN_GROUP)
    n, dim = codes.shape
    if not isinstance(seeds, (int, np.integer)) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")

    if not slots:
        raise ValueError("slots is empty: name at least one latent group")
    for name, s in slots.items():
        if name == "all":
            raise ValueError('slots must not contain "all": give the named latent groups only')
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise ValueError(f"slot {name!r} must be a contiguous slice, got {s!r}")
        start, stop, _ = s.indices(dim)
        if (s.start is not None and not 0 <= s.start < dim) or (s.stop is not None and not 0 < s.stop <= dim) \
                or stop <= start:
            raise ValueError(f"slot {name!r} = {s!r} is empty or outside the code's {dim} dimensions")
    names = check_concepts(concepts, n)

    unknown = sorted(set(contexts or {}) - set(names))
    if unknown:
        raise ValueError(f"contexts name concepts that are not given: {unknown}")
    for cname, families in (contexts or {}).items():
        for family in families:
            total = np.zeros(n, dtype=np.int64)
            for gname, mask in family.groups.items():
                mask = np.asarray(mask)
                if mask.shape != (n,) or mask.dtype != np.bool_:
                    raise ValueError(f"context {family.name!r} group {gname!r} (concept {cname!r}) must be a "
                                     f"bool mask of shape ({n},), got {mask.dtype} {mask.shape}")
                total += mask
            if (total > 1).any():
                raise ValueError(f"context family {family.name!r} (concept {cname!r}) has overlapping groups")

    if assignment is not None:
        missing = [c for c in names if c not in assignment]
        extra = sorted(set(assignment) - set(names))
        if missing or extra:
            raise ValueError(f"assignment must name a slot for exactly the given concepts: "
                             f"missing {missing}, unknown {extra}")
        bad = {c: s for c, s in assignment.items() if s not in slots}
        if bad:
            raise ValueError(f"assignment names unknown slots {bad}; slots are {list(slots)}")
    elif len(slots) < len(concepts):
        raise ValueError(f"{len(concepts)} concepts but only {len(slots)} slots: the Hungarian match needs "
                         f"at least one slot per concept (or give an assignment)")
    return codes


def _prepare(concepts: list[Concept]) -> list[probes.Target]:
    out = []
    for c in concepts:
        values = np.asarray(c.values)
        if c.kind == "continuous":
            v = values.astype(np.float64)
            sd = v.std()
            y = (v - v.mean()) / (sd if sd > 0 else 1.0)
            out.append(probes.Target(c.name, c.kind, y[:, None], None, 1))
        else:
            labels = values.astype(np.int64)
            m = int(labels.max()) + 1
            out.append(probes.Target(c.name, c.kind, np.eye(m)[labels], labels, m))
    return out


def _standardise_globally(codes: np.ndarray) -> np.ndarray:
    """Per-dimension z-score of the whole code. The probes standardise on their fitting data anyway,
    so this changes no result; it only keeps the sufficient statistics well conditioned."""
    sd = codes.std(axis=0)
    return (codes - codes.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


# ---- the report --------------------------------------------------------------------------------
def _halves(n: int, seeds: int) -> np.ndarray:
    """[seeds, N] bool: True = in seed s's fit half (the first N//2 of a permutation from seed s)."""
    out = np.zeros((seeds, n), dtype=bool)
    for s in range(seeds):
        out[s, np.random.default_rng(s).permutation(n)[: n // 2]] = True
    return out


def _f(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def ufr_report(codes: np.ndarray, slots: dict[str, slice], concepts: list[Concept],
               contexts: dict[str, list[ContextFamily]], assignment: dict[str, str] | None = None,
               seeds: int = 3) -> dict:
    """UFR of `codes` [N, D] for `concepts` on the named latent groups `slots` (DESIGN §7).

    `contexts[c]`: the context families that apply to concept `c` (none that partition by `c`);
    a concept without any gets no transfer score. `assignment`: concept -> slot; None = the best
    one-to-one match (Hungarian, on the slot x concept information matrix with each concept's
    column divided by its largest entry, so that concepts on different information scales weigh
    alike), and `assignment_rule` says which was used. Probes, halves and scales: the module doc.

    Per concept: `I` = mean of the diagonal of `P`; `tau` = mean over ordered pairs A != B of one
    family of `min(1, P[A, B] / P[B, B])`, where a pair whose `P[B, B]` is 0 (nothing to transfer
    to: the concept cannot even be read inside `B`) is left out of the mean, and `tau` = 0 if that
    leaves no pair (there was no context in which the concept could be read); `tau` is None when
    no family has two usable contexts. `L = clip(1 - info(best other single slot) / info(S(c)),
    0, 1)`, and 0 when `info(S(c))` is 0. One slot is compared against one: where another slot has
    more dimensions than `S(c)`, it is first reduced to its top `|S(c)|` principal components (PCA
    on each seed's fit half), so that size alone cannot win; a smaller one is used whole.
    `UFR_c = (I * tau * L) ** (1/3)` (None when tau is None); `ufr` = the mean over concepts that
    have one (None if none). Deterministic: seed s uses `numpy.random.default_rng(s)`.

    Beside each value, its standard error over the seeds (`ufr_se`, each concept's `se`): see
    `_add_standard_errors`.

    Returns a JSON-able dict: {"ufr", "ufr_se", "assignment_rule", "concepts": {name: {"slot", "kind",
    "I", "tau", "L", "ufr", "se": {"I", "tau", "L", "ufr"}, "contexts", "context_families", "P",
    "info": {"own", "best_other", "best_other_slot"}}}, "slot_info": {"slots", "concepts", "values"},
    "probe", "notes"}.
    Raises ValueError on inconsistent input (lengths, slots, masks, assignment).
    """
    limit = threadpool_limits(1, user_api="blas") if threadpool_limits else nullcontext()
    with limit:
        contexts = contexts or {}
        codes = _check_inputs(codes, slots, concepts, contexts, assignment, seeds)
        halves = _halves(codes.shape[0], seeds)
        report = _ufr_report(codes, slots, concepts, contexts, assignment, halves)
        _add_standard_errors(report, codes, slots, concepts, contexts, halves)
        return report


def _add_standard_errors(report: dict, codes, slots, concepts, contexts, halves: np.ndarray) -> None:
    """`ufr_se` and each concept's `se` {I, tau, L, ufr}: the standard error of the mean over the
    probe seeds, from each seed's halves scored alone (with the report's assignment). It is the
    evaluation's own noise: a difference between two checkpoints smaller than it says nothing. None
    with one seed, or where a seed has no value."""
    seeds = len(halves)
    assignment = {name: c["slot"] for name, c in report["concepts"].items()}
    alone = [_ufr_report(codes, slots, concepts, contexts, assignment, halves[s:s + 1])
             for s in range(seeds)] if seeds > 1 else []

    def se(values: list) -> float | None:
        return None if not values or any(v is None for v in values) else standard_error(values)

    report["ufr_se"] = se([r["ufr"] for r in alone])
    for name, concept in report["concepts"].items():
        concept["se"] = {key: se([r["concepts"][name][key] for r in alone]) for key in ("I", "tau", "L", "ufr")}
    report["probe"]["se"] = "standard error of the mean over the seeds, from each seed's halves scored alone"


def standard_error(values) -> float | None:
    """The standard error of the mean of `values` (sample sd over sqrt(n)); None for fewer than 2."""
    values = np.asarray(values, dtype=np.float64)
    return None if values.size < 2 else float(np.std(values, ddof=1) / math.sqrt(values.size))


def _ufr_report(codes, slots, concepts, contexts, assignment, halves: np.ndarray) -> dict:
    X_all = _standardise_globally(codes)
    targets = _prepare(concepts)
    notes: list[str] = []
    slot_names = list(slots)

    # The slot x concept information matrix, every slot at its own size.
    info = np.stack([probes.heldout_info(X_all[:, slots[s]], targets, halves) for s in slot_names])  # [S, C]

    if assignment is None:
        rule = "hungarian"
        top = info.max(axis=0)
        gain = np.where(top > 0, info / np.where(top > 0, top, 1.0), 0.0)
        rows, cols = linear_sum_assignment(gain, maximize=True)
        chosen = {targets[c].name: slot_names[r] for r, c in zip(rows, cols)}
        notes.append("slots assigned by the Hungarian rule on slot_info (each concept's column divided by its "
                     "largest entry): " + ", ".join(f"{c} -> {s}" for c, s in chosen.items()))
    else:
        rule = "given"
        chosen = dict(assignment)

    sizes = {s: slots[s].indices(codes.shape[1])[1] - slots[s].indices(codes.shape[1])[0] for s in slot_names}
    if len(set(sizes.values())) > 1:
        notes.append("slot sizes differ: for L, a slot larger than the concept's own is reduced to as many "
                     "principal components as the own slot has dimensions")

    report_concepts = {}
    for ci, t in enumerate(targets):
        own = chosen[t.name]
        X = X_all[:, slots[own]]
        P, names, fams = _transfer_matrix(t, X, contexts.get(t.name, []), halves, notes)
        diag = [P[i][i] for i in range(len(names)) if P[i][i] is not None]
        I = float(np.mean(diag)) if diag else 0.0
        tau = _transfer(P, fams, t.name, notes)

        own_info = float(info[slot_names.index(own), ci])
        best, best_slot = 0.0, None
        for s in slot_names:
            if s == own:
                continue
            if sizes[s] > sizes[own]:
                value = float(probes.heldout_info(X_all[:, slots[s]], [t], halves, reduce_to=sizes[own])[0])
            else:
                value = float(info[slot_names.index(s), ci])
            if best_slot is None or value > best:
                best, best_slot = value, s
        if best_slot is None:
            notes.append(f"{t.name}: no other slot to compare with; L = 1")
            L = 1.0
        elif own_info <= 0:
            L = 0.0
        else:
            L = float(np.clip(1.0 - best / own_info, 0.0, 1.0))

        ufr_c = None if tau is None else float((I * tau * L) ** (1.0 / 3.0))
        report_concepts[t.name] = {
            "slot": own, "kind": t.kind, "I": I, "tau": tau, "L": L, "ufr": ufr_c,
            "contexts": names, "context_families": fams, "P": P,
            "info": {"own": own_info, "best_other": float(best) if best_slot else None, "best_other_slot": best_slot},
        }

    values = [c["ufr"] for c in report_concepts.values() if c["ufr"] is not None]
    return {
        "ufr": float(np.mean(values)) if values else None,
        "assignment_rule": rule,
        "concepts": report_concepts,
        "slot_info": {"slots": slot_names, "concepts": [t.name for t in targets],
                      "values": [[float(v) for v in row] for row in info]},
        "probe": {"model": "ridge (one-hot for classes), standardised on the fit data", "alpha": probes.RIDGE_ALPHA,
                  "seeds": len(halves), "min_group": MIN_GROUP,
                  "score": {"continuous": "clip(R2, 0, 1)", "class": "chance-corrected balanced accuracy"},
                  "info": {"continuous": "-1/2 log(1 - R2)",
                           "class": "log m - cross-entropy of softmax(beta * ridge scores)"}},
        "notes": notes,
    }


def _transfer_matrix(t: probes.Target, X: np.ndarray, families: list[ContextFamily], halves: np.ndarray,
                     notes: list[str]) -> tuple[list[list[float | None]], list[str], list[str | None]]:
    """P [K, K] as nested lists (None off the family blocks), the context names and their families.

    Contexts in the order given: families, then groups within a family. Without any usable context,
    the one pseudo-context "all" (family None): fit on the fit half, score on the score half."""
    masks, names, fams = [], [], []
    for family in families:
        for gname, mask in family.groups.items():
            mask = np.asarray(mask, dtype=bool)
            small = min(int((mask & halves).sum(axis=1).min()), int((mask & ~halves).sum(axis=1).min()))
            if small < MIN_GROUP:
                notes.append(f"{t.name}: context {family.name}: {gname} left out ({small} samples in a half; "
                             f"fewer than {MIN_GROUP})")
                continue
            masks.append(mask)
            names.append(f"{family.name}: {gname}")
            fams.append(family.name)
    if not masks:
        notes.append(f"{t.name}: no usable context; I is the held-out score on all samples, tau is not measured")
        masks, names, fams = [np.ones(X.shape[0], dtype=bool)], ["all"], [None]
    G = np.stack(masks)  # [K, N]
    total = np.zeros((len(masks), len(masks)))
    count = np.zeros_like(total)
    for fit in halves:
        s = probes.scores(t, X, [np.flatnonzero(g & fit) for g in G], [np.flatnonzero(g & ~fit) for g in G])
        ok = np.isfinite(s)
        total += np.where(ok, s, 0.0)
        count += ok
    fam_arr = np.asarray(fams, dtype=object)
    same = fam_arr[:, None] == fam_arr[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where((count > 0) & same, total / np.maximum(count, 1), np.nan)
    P = [[_f(v) for v in row] for row in mean]
    return P, names, fams


def _transfer(P: list[list[float | None]], fams: list[str | None], name: str, notes: list[str]) -> float | None:
    """tau from P (see ufr_report); fams[i] is context i's family (None: the pseudo-context "all")."""
    ratios, pairs = [], 0
    for a in range(len(fams)):
        for b in range(len(fams)):
            if a == b or fams[a] != fams[b] or fams[a] is None:
                continue
            pairs += 1
            pab, pbb = P[a][b], P[b][b]
            if pab is None or pbb is None or pbb <= probes.EPS:
                continue
            ratios.append(min(1.0, pab / pbb))
    if pairs == 0:
        notes.append(f"{name}: no context family with two usable contexts; tau and UFR are not measured")
        return None
    if not ratios:
        notes.append(f"{name}: the concept cannot be read in any context; tau = 0")
        return 0.0
    if len(ratios) < pairs:
        notes.append(f"{name}: {pairs - len(ratios)} of {pairs} context pairs left out of tau "
                     f"(no score in the target context)")
    return float(np.mean(ratios))
