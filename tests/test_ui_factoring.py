"""The dashboard's factoring pages (M5): the tree's [Run Eval] and UFR badges, a checkpoint's evaluation
page, two checkpoints compared, the figures served through the dashboard. The pure parts directly;
the pages through NiceGUI's simulated user against a real trainer with a tiny Factor-Slot model,
whose factoring jobs run for real (the first in a test run also builds the held-out sets and the
digit classifier, cached for the rest)."""

from __future__ import annotations

import asyncio
import io
import math
from typing import Any

import pytest
from nicegui import ElementFilter, ui
from PIL import Image

from acc.ui.app import route
from acc.ui.client import TrainerClient
from acc.ui.factoring import (HOW_TO_READ, better, compare_url, comparison_rows, eval_url, figure_url, numerics_text,
                              slot_info_options, transfer_options, traversal_facts, ufr_rows, ufr_text)
from acc.ui.tree import tree_nodes
from tests.test_ui import dashboard, eventually, no_error_logs  # noqa: F401 (an autouse fixture)

DIGIT = {"type": "ClassificationTask", "name": "digit", "latent": "digit"}
JOB_S = 300


# ---- pure parts ----------------------------------------------------------------------------------
def test_paths_route_to_their_pages():
    assert route("/") == ("training", {})
    assert route("/checkpoints") == ("checkpoints", {})
    assert route("/checkpoints/") == ("checkpoints", {})
    assert route("/checkpoints/ab12/eval") == ("eval", {"checkpoint": "ab12"})
    assert route("/compare") == ("compare", {})
    assert route("/checkpoints/ab12") == ("missing", {})
    assert route("/anything/else") == ("missing", {})
    assert eval_url("ab12") == "/checkpoints/ab12/eval"
    assert compare_url("x", "y") == "/compare?a=x&b=y" and compare_url(None, "y") == "/compare?b=y"
    assert figure_url("ab12", "traversal", "slant", "k1") == "/_acc/figures/ab12/traversal.png?group=slant&v=k1"
    assert figure_url("ab12", "attention") == "/_acc/figures/ab12/attention.png"


def report(ufr: float, thickness: dict[str, Any], overlap: float | None = 0.5) -> dict[str, Any]:
    concept = {"slot": "thickness", "kind": "continuous", "contexts": ["digit class: 0-1", "digit class: 2-3", "source: natural"],
               "P": [[0.5, 0.25, None], [0.2, 0.6, None], [None, None, 0.4]],
               "info": {"own": 0.5, "best_other": 0.25, "best_other_slot": "style"}, **thickness}
    return {"ufr": ufr, "concepts": {"thickness": concept}, "traversal": {
        "thickness": {"slot": "thickness", "rho": -0.9, "range": 2.0, "unit": "px", "class_kept": 0.75}},
        "slot_info": {"slots": ["thickness", "style"], "concepts": ["thickness"], "values": [[0.5], [0.25]]},
        "mig": {"mig": 0.1}, "dci": {"disentanglement": 0.3, "completeness": 0.2, "informativeness": 0.5},
        "attention": {"overlap": overlap}, "slots": {"thickness": [0, 4], "style": [4, 8]}}


def test_the_better_of_two_reports_is_marked_per_row():
    a = report(0.4, {"I": 0.8, "tau": 0.9, "L": 0.1, "ufr": 0.4}, overlap=0.9)
    b = report(0.6, {"I": 0.7, "tau": 0.9002, "L": 0.5, "ufr": 0.6}, overlap=0.2)
    rows = {row["what"]: row for row in comparison_rows(a, b)}
    assert rows["UFR"]["better"] == "b" and rows["UFR"]["delta"] == pytest.approx(0.2)
    assert rows["thickness I"]["better"] == "a"  # higher is better
    assert rows["thickness τ"]["better"] == "="  # within the tolerance: neither
    assert rows["thickness traversal |ρ|"]["a"] == 0.9  # the sign of a principal direction means nothing
    assert rows["attention overlap"]["better"] == "b"  # lower is better
    missing = {row["what"]: row for row in comparison_rows(a, None)}
    assert missing["UFR"]["better"] == "" and missing["UFR"]["b"] is None and missing["UFR"]["delta"] is None
    assert better(None, 1.0) == "" and better(0.2, 0.1, higher=False) == "b"


def test_a_difference_within_the_evaluations_noise_gets_no_arrow():
    a = report(0.40, {"I": 0.80, "tau": 0.9, "L": 0.1, "ufr": 0.40, "se": {"I": 0.01, "tau": 0.01, "L": 0.01, "ufr": 0.01}})
    b = report(0.43, {"I": 0.81, "tau": 0.9, "L": 0.5, "ufr": 0.43, "se": {"I": 0.01, "tau": 0.01, "L": 0.01, "ufr": 0.01}})
    a["ufr_se"] = b["ufr_se"] = 0.01
    a["traversal"]["thickness"] |= {"rho_se": 0.2, "class_kept_se": 0.05}
    b["traversal"]["thickness"] |= {"rho": 0.7, "rho_se": 0.2, "class_kept": 0.95, "class_kept_se": 0.05}
    rows = {row["what"]: row for row in comparison_rows(a, b)}
    assert rows["UFR"]["better"] == "b"  # 0.03 against 2 x 0.014: outside the noise
    assert rows["UFR"]["noise"] == pytest.approx(0.01 * 2 ** 0.5)
    assert rows["thickness I"]["better"] == "≈"  # 0.01: inside it
    assert rows["thickness L"]["better"] == "b"
    assert rows["thickness traversal |ρ|"]["better"] == "≈"  # 0.2 apart, each ± 0.2 over 5 seeds
    assert rows["thickness class kept"]["better"] == "b"
    assert rows["MIG"]["noise"] is None  # no standard error: only the tolerance applies
    no_se = {row["what"]: row for row in comparison_rows(report(0.4, {"I": 0.8}), report(0.4, {"I": 0.81}))}
    assert no_se["thickness I"]["better"] == "b" and no_se["thickness I"]["noise"] is None
    assert better(0.5, 0.519, noise=0.01) == "≈" and better(0.5, 0.53, noise=0.01) == "b"


def test_what_a_checkpoint_was_trained_under_reads_in_one_line():
    cpu = {"torch": "2.13.0+cpu", "device": "cpu", "ranks": 1, "cpu_capability": "AVX512", "threads": 2}
    gpu = {"torch": "2.13.0", "device": "cuda:0", "ranks": 2, "gpu": "NVIDIA H200", "cuda": "13.0"}
    assert numerics_text([cpu]) == "cpu AVX512 · 2 threads · torch 2.13.0+cpu"
    assert numerics_text([cpu, {**cpu, "threads": 1}]) == ("cpu AVX512 · 2 threads · torch 2.13.0+cpu then "
                                                          "cpu AVX512 · 1 thread · torch 2.13.0+cpu")
    assert numerics_text([gpu]) == "cuda:0 NVIDIA H200 · CUDA 13.0 · 2 ranks · torch 2.13.0"
    amd = {**cpu, "cpu_model": "AMD EPYC", "cpu_capability": "AVX2"}  # recorded since session 10
    assert numerics_text([amd]) == "cpu AMD EPYC · AVX2 · 2 threads · torch 2.13.0+cpu"
    assert numerics_text([]) == ""


def test_transfer_matrix_cells_without_a_value_stay_blank_and_the_diagonal_is_outlined():
    r = report(0.5, {"I": 0.5, "tau": 0.5, "L": 0.5, "ufr": 0.5})
    options = transfer_options("thickness", r["concepts"]["thickness"])
    cells = options["series"][0]["data"]
    assert [c["value"] for c in cells] == [[0, 0, 0.5], [1, 0, 0.25], [0, 1, 0.2], [1, 1, 0.6], [2, 2, 0.4]]
    assert [c["value"][:2] for c in cells if "itemStyle" in c] == [[0, 0], [1, 1], [2, 2]]
    assert options["xAxis"]["data"] == options["yAxis"]["data"] == r["concepts"]["thickness"]["contexts"]
    info = slot_info_options(r)
    assert info["yAxis"]["data"] == ["thickness", "style"] and info["xAxis"]["data"] == ["thickness"]
    assert [c["value"][:2] for c in info["series"][0]["data"] if "itemStyle" in c] == [[0, 0]]  # its scored slot
    assert ufr_rows(r)[0] | {} == {"concept": "thickness", "slot": "thickness", "kind": "continuous", "I": "0.5",
                                  "tau": "0.5", "L": "0.5", "ufr": "0.5", "leak": "style: 0.25 nats (own 0.5)"}
    assert traversal_facts(r, "thickness") == "scored as thickness · ρ -0.9 · range 2 px · class kept 0.75"
    assert traversal_facts(r, "style") is None
    r["concepts"]["thickness"]["se"] = {"I": 0.012, "tau": None, "L": 0.003, "ufr": 0.0051}
    r["traversal"]["thickness"] |= {"rho_se": 0.04, "range_se": 0.31, "class_kept_se": 0.1}
    assert {k: ufr_rows(r)[0][k] for k in ("I", "tau", "L", "ufr")} == {
        "I": "0.5 ± 0.012", "tau": "0.5", "L": "0.5 ± 0.003", "ufr": "0.5 ± 0.0051"}
    assert traversal_facts(r, "thickness") == ("scored as thickness · ρ -0.9 ± 0.04 · range 2 ± 0.31 px · "
                                               "class kept 0.75 ± 0.1")
    assert ufr_text(r) == "0.500" and ufr_text(r | {"ufr_se": 0.0123}) == "0.500 ± 0.012"
    r["traversal"]["thickness"]["probe"] = {"rho": 0.05, "range": 0.3, "class_kept": 0.9}
    assert traversal_facts(r, "thickness").endswith("class kept 0.75 ± 0.1 · along the probe's direction ρ 0.05, range 0.3")


def test_a_node_shows_its_ufr_its_progress_and_its_evaluation_link():
    rows = [{"id": "a", "name": "na", "parent": None, "step": 1, "metrics": {}},
            {"id": "b", "name": "nb", "parent": "a", "step": 2, "metrics": {}}]
    evals = {"a": {"ufr": 0.4123, "status": "done"}, "b": {"status": "running", "progress": 0.55, "stage": "traversals"}}
    a = tree_nodes(rows, evals=evals)[0]
    b = a["children"][0]
    assert (a["ufr"], a["running"], a["eval_url"]) == ("0.41", False, "/checkpoints/a/eval")
    assert (b["ufr"], b["running"], b["progress"], b["stage"]) == (None, True, 0.55, "traversals · 55%")
    assert tree_nodes(rows, evals={"a": {"status": "failed", "error": "boom"}})[0]["failed"] is True


# ---- the pages against a real trainer ------------------------------------------------------------
@pytest.fixture
def trained(trainer_factory):
    """A trainer whose tiny Factor-Slot model trained 20 steps with a digit task, saved as `first`,
    then 5 more, saved as `second`."""
    trainer = trainer_factory(tasks=["ReconstructionTask", DIGIT])
    engine = trainer.session.engine
    engine.train(20)
    first = engine.save_checkpoint("first")
    engine.train(5)
    second = engine.save_checkpoint("second")
    return trainer, {"first": first, "second": second}


def evaluate(trainer, checkpoint_id: str) -> dict[str, Any]:
    """Run the factoring job through the API and wait for it; the report."""
    with TrainerClient(trainer.base_url) as client:
        job = client.start_factoring(checkpoint_id)
        final = trainer.session.jobs.wait(job["id"], JOB_S)
        assert final.status == "done", final.public()
        return client.factoring(checkpoint_id)


def nodes_by_name(tree: ui.tree) -> dict[str, dict[str, Any]]:
    def walk(items):
        for node in items:
            yield node["label"].split(" ·")[0], node
            yield from walk(node["children"])
    return dict(walk(tree.props["nodes"]))


def texts(user, marker: str) -> list[str]:
    with user.client:
        return [e.text for e in ElementFilter(marker=marker, local_scope=False)]


def found(user, marker: str) -> list[ui.element]:
    with user.client:
        return list(ElementFilter(marker=marker, local_scope=False))


@pytest.mark.asyncio
async def test_run_eval_from_the_tree_shows_progress_then_the_ufr_and_links_the_evaluation(trained):
    trainer, checkpoints = trained
    first = checkpoints["first"]
    async with dashboard(trainer.base_url) as user:
        await user.open("/checkpoints")
        await user.should_see("first · step 20", retries=100)
        tree = user.find(marker="checkpoint-tree").elements.pop()
        assert nodes_by_name(tree)["first"]["ufr"] is None and nodes_by_name(tree)["first"]["eval_url"] == \
            f"/checkpoints/{first['id']}/eval"
        user.find(marker="checkpoint-tree").trigger("update:selected", first["id"])
        link = user.find(marker="selected-eval-link").elements.pop()
        await eventually(lambda: link.props["href"] == f"/checkpoints/{first['id']}/eval")
        user.find(marker="tree-run-eval").click()
        # The trainer's own stages, from the `factoring` events (the page only ever says "starting").
        await eventually(lambda: nodes_by_name(tree)["first"]["running"]
                         and not nodes_by_name(tree)["first"]["stage"].startswith("starting"), timeout=JOB_S)
        with TrainerClient(trainer.base_url) as client:
            report = await eventually(lambda: client.factoring_or_none(first["id"]), timeout=JOB_S)
        await eventually(lambda: nodes_by_name(tree)["first"]["ufr"] == f"{report['ufr']:.2f}")
        assert not nodes_by_name(tree)["first"]["running"] and nodes_by_name(tree)["second"]["ufr"] is None

        await user.open("/")  # the training page's tree, freshly opened, shows it too (from the API)
        await user.should_see("second · step 25", retries=100)
        tree = user.find(marker="checkpoint-tree").elements.pop()
        await eventually(lambda: nodes_by_name(tree)["first"]["ufr"] == f"{report['ufr']:.2f}")
        assert [e.props["href"] for e in found(user, "nav:checkpoints")] == ["/checkpoints"]


@pytest.mark.asyncio
async def test_the_evaluation_page_shows_every_block_of_the_report_and_runs_one_where_there_is_none(trained):
    trainer, checkpoints = trained
    first, second = checkpoints["first"], checkpoints["second"]
    report = await asyncio.to_thread(evaluate, trainer, first["id"])
    async with dashboard(trainer.base_url) as user:
        await user.open(f"/checkpoints/{first['id']}/eval")
        await user.should_see(marker="ufr-table", retries=200)
        assert texts(user, "eval-title") == ["first · step 20"]
        assert texts(user, "eval-facts")[0].endswith(f"trained under {numerics_text(first['trained_under'])}")
        assert numerics_text(first["trained_under"]).startswith("cpu ")  # what its 20 steps ran under
        assert texts(user, "ufr-value") == [ufr_text(report)] and " ± " in ufr_text(report)
        assert texts(user, "assignment-rule") == [f"assignment rule: {report['assignment_rule']}"]
        table = user.find(marker="ufr-table").elements.pop()
        by_concept = {row["concept"]: row for row in table.rows}
        assert set(by_concept) == set(report["concepts"]) == {"thickness", "slant", "digit"}
        for name, concept in report["concepts"].items():
            row = by_concept[name]
            assert row["slot"] == concept["slot"]
            for key in ("I", "tau", "L", "ufr"):
                value, se = row[key].split(" ± ")  # every value beside its standard error over the probe seeds
                assert float(value) == pytest.approx(concept[key], abs=5e-3), (name, key)
                assert float(se) == pytest.approx(concept["se"][key], rel=0.05, abs=1e-9), (name, key)
        assert texts(user, "importance-model") == [f"DCI importance model: {report['dci']['importance_model']}"]
        literature = {row["what"]: row["value"] for row in user.find(marker="literature-table").elements.pop().rows}
        assert float(literature["MIG"]) == pytest.approx(report["mig"]["mig"], rel=1e-2)

        for name, concept in report["concepts"].items():  # P_c with its context names; cells without a value blank
            chart = user.find(marker=f"transfer:{name}").elements.pop()
            assert chart.options["yAxis"]["data"] == concept["contexts"]
            values = [v for row in concept["P"] for v in row]
            assert len(chart.options["series"][0]["data"]) == sum(v is not None for v in values) < len(values)
        info = user.find(marker="slot-info").elements.pop()
        assert info.options["yAxis"]["data"] == report["slot_info"]["slots"]

        for slot in report["slots"]:  # each slot group: its traversal and activation grids, its facts
            for kind in ("traversal", "activation"):
                image = user.find(marker=f"{kind}:{slot}").elements.pop()
                assert image.props["src"] == figure_url(first["id"], kind, slot, report["key"])
        assert texts(user, "traversal-facts:thickness")[0].startswith("scored as thickness · ρ ")
        assert texts(user, "traversal-facts:style") == ["no concept is scored on this slot"]
        with TrainerClient(trainer.base_url) as client:  # served by the dashboard: the trainer's own PNG
            for kind, group in (("traversal", "thickness"), ("attention", None)):
                response = await user.http_client.get(figure_url(first["id"], kind, group, report["key"]))
                assert response.status_code == 200 and response.headers["content-type"] == "image/png"
                assert response.content == await asyncio.to_thread(client.figure_png, first["id"], kind, group)
                assert Image.open(io.BytesIO(response.content)).width > 9 * 28
        assert (await user.http_client.get(figure_url(second["id"], "traversal", "thickness"))).status_code == 404
        assert (await user.http_client.get("/_acc/figures/x/movie.png")).status_code == 404
        with user.client:
            shown = {e.props.get("data-how") for e in ElementFilter(kind=ui.label, local_scope=False)} - {None}
        assert shown == set(HOW_TO_READ)  # a "how to read this" for every block
        await user.should_see("Nothing missing, no notes.")
        assert found(user, "back-to-tree")[0].props["href"] == "/checkpoints"

        # Compare with another checkpoint: from here to the comparison page.
        user.find(marker="compare-with").elements.pop().set_value(second["id"])
        await user.should_see(marker="compare-scores", retries=200)
        assert user.back_history[-1] == f"/compare?a={first['id']}&b={second['id']}"

        # A checkpoint without a report: says so, and runs one from its page.
        await user.open(f"/checkpoints/{second['id']}/eval")
        await user.should_see(marker="no-report", retries=100)
        assert not found(user, "ufr-table")
        user.find(marker="run-eval-first").click()
        await user.should_see(marker="ufr-table", retries=10 * JOB_S)
        assert texts(user, "run-eval") == ["Re-run Eval"]
        with TrainerClient(trainer.base_url) as client:
            assert texts(user, "ufr-value") == [ufr_text(client.factoring(second["id"]))]

        await user.open("/checkpoints/nope/eval")
        await user.should_see(marker="no-checkpoint", retries=100)


@pytest.mark.asyncio
async def test_compare_puts_two_checkpoints_side_by_side_with_the_better_marked(trained):
    trainer, checkpoints = trained
    first, second = checkpoints["first"], checkpoints["second"]
    report_a = await asyncio.to_thread(evaluate, trainer, first["id"])
    async with dashboard(trainer.base_url) as user:
        await user.open("/checkpoints")
        await user.should_see("second · step 25", retries=100)
        user.find(marker="checkpoint-tree").trigger("update:ticked", [second["id"], first["id"]])
        user.find(marker="compare").click()  # the older as a
        await user.should_see(marker="compare-scores", retries=200)
        assert user.back_history[-1] == f"/compare?a={first['id']}&b={second['id']}"
        await user.should_see(marker="compare-missing-report")  # b has none yet
        assert texts(user, "cmp:UFR:a") == [f"{report_a['ufr']:.3g}"] and texts(user, "cmp:UFR:b") == ["—"]
        await user.should_see(marker="compare:loss/reconstruction_task", retries=100)  # the curves, from the root

        user.find(marker="run-eval-b").click()  # fills in when its job is done
        await user.should_not_see(marker="compare-missing-report", retries=10 * JOB_S)
        with TrainerClient(trainer.base_url) as client:
            report_b = client.factoring(second["id"])
        rows = {row["what"]: row for row in comparison_rows(report_a, report_b)}
        for what, row in rows.items():
            key = what.replace(" ", "_")
            cells = {side: found(user, f"cmp:{key}:{side}")[0] for side in ("a", "b")}
            for side, cell in cells.items():
                assert cell.props["data-better"] == str(row["better"] == side).lower(), (what, side)
                assert cell.text.startswith("▲ ") == (row["better"] == side)
                value = row[side]
                shown = cell.text.removeprefix("▲ ")
                assert (value is None and shown == "—") or math.isclose(float(shown), value, rel_tol=1e-2, abs_tol=1e-3)
        assert {rows["UFR"]["better"]} <= {"a", "b", "=", "≈"}
        for slot in report_a["slots"]:  # traversal grids next to each other, per slot group
            for side, (row, rep) in {"a": (first, report_a), "b": (second, report_b)}.items():
                image = found(user, f"cmp-traversal:{slot}:{side}")[0]
                assert image.props["src"] == figure_url(row["id"], "traversal", slot, rep["key"])
        assert [found(user, f"cmp-attention:all:{side}")[0].props["src"] for side in ("a", "b")] == [
            figure_url(first["id"], "attention", None, report_a["key"]),
            figure_url(second["id"], "attention", None, report_b["key"])]
        table = found(user, "compare-table")[0]
        assert {row["field"]: row for row in table.rows}["step"] == {"field": "step", "a": "20", "b": "25", "same": "≠"}

        # The pickers choose another pair: a new URL.
        user.find(marker="compare-a").elements.pop().set_value(second["id"])
        await eventually(lambda: user.back_history[-1] == f"/compare?a={second['id']}&b={second['id']}")
        await user.open("/compare")
        await user.should_see(marker="pick-two", retries=100)
