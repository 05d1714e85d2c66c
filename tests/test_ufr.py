"""UFR (acc.eval.ufr) on synthetic codes whose structure is known by construction.

Three concepts: thickness and slant (continuous, independent standard normals) and digit class
(0..9), and a nuisance "source" (three sources) that is no concept. Four slots of 10 dimensions:
"digit", "thickness", "slant", "style". Contexts as DESIGN §7 has them: digit-class groups, the
source, and tertiles of the other continuous factor. Families of codes:

- factored: each concept linearly in its own slot (a random direction, or a class codebook), small
  isotropic noise elsewhere; "style" is pure noise.
- leaky: factored, and each concept also written, weaker, into the next slot.
- context-dependent: thickness and slant each sit on a different axis of their slot for each digit
  class, so a probe fitted on one digit reads noise on another (the digit concept stays factored).
- entangled: the factored code's 40 dimensions mixed by one random rotation.
- noisy: factored, with heavy noise added to each concept's own slot.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from acc.eval.ufr import Concept, ContextFamily, ufr_report

N = 4000
DIM = 10
SLOTS = {"digit": slice(0, 10), "thickness": slice(10, 20), "slant": slice(20, 30), "style": slice(30, 40)}
TRUE = {"thickness": "thickness", "slant": "slant", "digit": "digit"}


def factors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"thickness": rng.standard_normal(N), "slant": rng.standard_normal(N),
            "digit": rng.integers(0, 10, N), "source": rng.integers(0, 3, N)}


def tertiles(values: np.ndarray, name: str) -> ContextFamily:
    low, high = np.quantile(values, [1 / 3, 2 / 3])
    return ContextFamily(f"{name} tertile", {"low": values <= low, "mid": (values > low) & (values <= high),
                                             "high": values > high})


def setting(f: dict[str, np.ndarray]) -> tuple[list[Concept], dict[str, list[ContextFamily]]]:
    concepts = [Concept("thickness", f["thickness"], "continuous"), Concept("slant", f["slant"], "continuous"),
                Concept("digit", f["digit"], "class")]
    digit = ContextFamily("digit class", {str(d): f["digit"] == d for d in range(10)})
    source = ContextFamily("source", {f"source {s}": f["source"] == s for s in range(3)})
    contexts = {"thickness": [digit, source, tertiles(f["slant"], "slant")],
                "slant": [digit, source, tertiles(f["thickness"], "thickness")],
                "digit": [source, tertiles(f["thickness"], "thickness"), tertiles(f["slant"], "slant")]}
    return concepts, contexts


def unit(rng, d=DIM) -> np.ndarray:
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


def build(kind: str, f: dict[str, np.ndarray], seed: int = 1) -> np.ndarray:
    """Codes [N, 40] of one family (see the module doc)."""
    rng = np.random.default_rng(seed)
    codebook = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]  # orthonormal class codes
    u_t, u_s = unit(rng), unit(rng)
    z = 0.1 * rng.standard_normal((N, 4 * DIM))
    digit_code = codebook[f["digit"]]
    z[:, SLOTS["digit"]] += digit_code
    if kind == "context":
        # One axis per digit class: in digit d, thickness is dimension d of its slot, slant too.
        rows = np.arange(N)
        z[rows, SLOTS["thickness"].start + f["digit"]] += f["thickness"]
        z[rows, SLOTS["slant"].start + f["digit"]] += f["slant"]
    else:
        z[:, SLOTS["thickness"]] += f["thickness"][:, None] * u_t
        z[:, SLOTS["slant"]] += f["slant"][:, None] * u_s
    if kind == "leaky":  # each concept also in the next slot, weaker (a third; a seventh for the class code)
        z[:, SLOTS["thickness"]] += 0.15 * digit_code @ np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
        z[:, SLOTS["slant"]] += 0.3 * f["thickness"][:, None] * unit(rng)
        z[:, SLOTS["style"]] += 0.3 * f["slant"][:, None] * unit(rng)
    if kind == "noisy":
        for name in ("digit", "thickness", "slant"):
            z[:, SLOTS[name]] += 2.0 * rng.standard_normal((N, DIM))
    if kind == "entangled":
        z = z @ np.linalg.qr(rng.standard_normal((4 * DIM, 4 * DIM)))[0]
    return z


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    f = factors()
    concepts, contexts = setting(f)
    return {kind: ufr_report(build(kind, f), SLOTS, concepts, contexts, assignment=TRUE)
            for kind in ("factored", "leaky", "context", "entangled", "noisy")}


def parts(report: dict, concept: str) -> tuple[float, float, float]:
    c = report["concepts"][concept]
    return c["I"], c["tau"], c["L"]


def test_families_are_ordered(reports):
    u = {k: r["ufr"] for k, r in reports.items()}
    print({k: round(v, 3) for k, v in u.items()})
    assert u["factored"] > u["leaky"] > u["context"] > u["entangled"]
    assert u["factored"] > 0.85
    assert u["entangled"] < 0.2


def test_each_part_reacts_to_its_own_defect(reports):
    for c in ("thickness", "slant", "digit"):
        i, tau, loc = parts(reports["factored"], c)
        assert i > 0.9 and tau > 0.9 and loc > 0.9, (c, i, tau, loc)
    # Context-dependent directions: transfer collapses, informativeness and locality do not.
    for c in ("thickness", "slant"):
        i, tau, loc = parts(reports["context"], c)
        assert tau < 0.3 and i > 0.8 and loc > 0.9, (c, i, tau, loc)
    # A leak into another slot lowers locality only.
    for c in ("thickness", "slant", "digit"):
        i, tau, loc = parts(reports["leaky"], c)
        f_i, f_tau, f_loc = parts(reports["factored"], c)
        assert loc < f_loc - 0.15 and i > 0.9 and tau > 0.9, (c, i, tau, loc)
    # Heavy noise in the concept's own slot lowers informativeness; it stays local.
    for c in ("thickness", "slant", "digit"):
        i, tau, loc = parts(reports["noisy"], c)
        assert i < 0.5 and loc > 0.9, (c, i, tau, loc)


def test_transfer_matrix_is_block_structured(reports):
    c = reports["context"]["concepts"]["thickness"]
    fams, P = c["context_families"], c["P"]
    assert len(c["contexts"]) == len(P) == 16 and all(len(row) == 16 for row in P)
    for a in range(16):
        for b in range(16):
            assert (P[a][b] is None) == (fams[a] != fams[b])
    digit = [i for i, fam in enumerate(fams) if fam == "digit class"]
    assert all(P[i][i] > 0.9 for i in digit)
    off = [P[a][b] for a in digit for b in digit if a != b]
    assert np.mean(off) < 0.15 and max(off) < 0.5  # only a noise dimension's chance weight reads anything


def test_slot_info_matrix(reports):
    info = reports["factored"]["slot_info"]
    assert info["slots"] == list(SLOTS) and info["concepts"] == ["thickness", "slant", "digit"]
    values = np.asarray(info["values"])
    assert values.shape == (4, 3)
    for j, concept in enumerate(info["concepts"]):
        own = info["slots"].index(concept)
        assert values[own, j] > 1.0
        assert np.delete(values[:, j], own).max() < 0.05
    leaky = reports["leaky"]["concepts"]["thickness"]["info"]
    assert leaky["best_other_slot"] == "slant" and 0 < leaky["best_other"] < leaky["own"]


def test_report_is_json_and_complete(reports):
    r = reports["factored"]
    assert json.loads(json.dumps(r)) == r
    assert set(r) >= {"ufr", "assignment_rule", "concepts", "slot_info", "notes"}
    assert r["assignment_rule"] == "given"
    for c in r["concepts"].values():
        assert set(c) >= {"slot", "I", "tau", "L", "ufr", "contexts", "P", "info"}
        assert set(c["info"]) == {"own", "best_other", "best_other_slot"}
    assert r["concepts"]["digit"]["contexts"][:3] == ["source: source 0", "source: source 1", "source: source 2"]


def test_standard_errors_are_the_spread_of_the_seeds_scored_alone(reports):
    """Each value's standard error over the probe seeds: small where the code is clean, larger with
    fewer samples, and absent with one seed."""
    for kind, r in reports.items():
        assert r["ufr_se"] is not None and r["ufr_se"] >= 0, kind
        for c in r["concepts"].values():
            assert set(c["se"]) == {"I", "tau", "L", "ufr"} and all(v is not None and v >= 0 for v in c["se"].values())
    assert reports["factored"]["ufr_se"] < 0.01  # every seed finds the same clean code
    f = factors(7)
    concepts, contexts = setting(f)
    z = build("noisy", f, seed=8)
    whole = ufr_report(z, SLOTS, concepts, contexts, assignment=TRUE)
    alone = ufr_report(z, SLOTS, concepts, contexts, assignment=TRUE, seeds=1)
    assert alone["ufr_se"] is None and all(v is None for v in alone["concepts"]["slant"]["se"].values())
    few = slice(0, 300)
    small = ufr_report(z[few], SLOTS, concepts_of(concepts, few), contexts_of(contexts, few), assignment=TRUE)
    assert small["concepts"]["slant"]["se"]["I"] > whole["concepts"]["slant"]["se"]["I"]


def concepts_of(concepts: list[Concept], rows: slice) -> list[Concept]:
    return [Concept(c.name, np.asarray(c.values)[rows], c.kind) for c in concepts]


def contexts_of(contexts: dict[str, list[ContextFamily]], rows: slice) -> dict[str, list[ContextFamily]]:
    return {name: [ContextFamily(f.name, {g: np.asarray(m)[rows] for g, m in f.groups.items()}) for f in families]
            for name, families in contexts.items()}


def test_hungarian_recovers_the_true_assignment():
    f = factors(3)
    concepts, contexts = setting(f)
    z = build("factored", f, seed=4)
    shuffled = {"a": SLOTS["slant"], "b": SLOTS["style"], "c": SLOTS["digit"], "d": SLOTS["thickness"]}
    r = ufr_report(z, shuffled, concepts, contexts, assignment=None)
    assert r["assignment_rule"] == "hungarian"
    assert {k: c["slot"] for k, c in r["concepts"].items()} == {"slant": "a", "digit": "c", "thickness": "d"}
    assert r["ufr"] > 0.85


def test_deterministic():
    f = factors(5)
    concepts, contexts = setting(f)
    z = build("leaky", f, seed=6)
    assert ufr_report(z, SLOTS, concepts, contexts, seeds=2) == ufr_report(z, SLOTS, concepts, contexts, seeds=2)


def test_small_contexts_are_left_out_with_a_note():
    f = factors(7)
    concepts, contexts = setting(f)
    tiny = np.zeros(N, dtype=bool)
    tiny[:12] = True
    contexts["thickness"] = contexts["thickness"] + [ContextFamily("odd", {"tiny": tiny, "rest": ~tiny})]
    r = ufr_report(build("factored", f), SLOTS, concepts, contexts, assignment=TRUE, seeds=2)
    names = r["concepts"]["thickness"]["contexts"]
    assert "odd: rest" in names and "odd: tiny" not in names
    assert any("odd: tiny left out" in note for note in r["notes"])


def test_a_concept_without_contexts_has_no_transfer():
    f = factors(10)
    concepts, contexts = setting(f)
    contexts["slant"] = []
    r = ufr_report(build("factored", f), SLOTS, concepts, contexts, assignment=TRUE, seeds=1)
    slant = r["concepts"]["slant"]
    assert slant["contexts"] == ["all"] and slant["P"][0][0] > 0.9 and slant["I"] > 0.9
    assert slant["tau"] is None and slant["ufr"] is None
    assert any(note.startswith("slant: no usable context") for note in r["notes"])
    others = [r["concepts"][c]["ufr"] for c in ("thickness", "digit")]
    assert r["ufr"] == pytest.approx(np.mean(others))


def test_unequal_slot_sizes_are_dimension_matched():
    f = factors(8)
    concepts, contexts = setting(f)
    z = build("factored", f)
    slots = {"digit": slice(0, 10), "thickness": slice(10, 20), "slant": slice(20, 30), "style": slice(30, 40),
             "wide": slice(0, 40)}  # overlaps everything, twice as wide as any concept's own slot
    r = ufr_report(z, slots, concepts, contexts, assignment=TRUE, seeds=1)
    assert any("slot sizes differ" in note for note in r["notes"])
    for c in r["concepts"].values():
        assert 0.0 <= c["L"] <= 1.0 and c["info"]["best_other_slot"] == "wide"


def test_bad_input_is_refused():
    f = factors(9)
    concepts, contexts = setting(f)
    z = build("factored", f)
    with pytest.raises(ValueError, match="samples"):
        ufr_report(z[:-1], SLOTS, concepts, contexts)
    with pytest.raises(ValueError, match="unknown slots"):
        ufr_report(z, SLOTS, concepts, contexts, assignment={**TRUE, "digit": "nope"})
    with pytest.raises(ValueError, match="missing"):
        ufr_report(z, SLOTS, concepts, contexts, assignment={"thickness": "thickness"})
    with pytest.raises(ValueError, match='"all"'):
        ufr_report(z, {**SLOTS, "all": slice(0, 40)}, concepts, contexts)
    with pytest.raises(ValueError, match="outside"):
        ufr_report(z, {**SLOTS, "x": slice(40, 50)}, concepts, contexts)
    with pytest.raises(ValueError, match="bool mask"):
        bad = {**contexts, "digit": [ContextFamily("source", {"s": np.ones(N - 1, dtype=bool)})]}
        ufr_report(z, SLOTS, concepts, bad)
    with pytest.raises(ValueError, match="overlapping"):
        both = {**contexts, "digit": [ContextFamily("x", {"a": np.ones(N, bool), "b": np.ones(N, bool)})]}
        ufr_report(z, SLOTS, concepts, both)
    with pytest.raises(ValueError, match="not given"):
        ufr_report(z, SLOTS, concepts, {**contexts, "colour": []})
    with pytest.raises(ValueError, match="integers"):
        ufr_report(z, SLOTS, [Concept("digit", f["digit"] + 0.5, "class")], {})
    with pytest.raises(ValueError, match="slots"):
        ufr_report(z, {"digit": SLOTS["digit"]}, concepts, contexts)
