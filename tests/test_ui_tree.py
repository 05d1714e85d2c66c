"""The checkpoint tree's pure parts: nesting by parent, headline metrics, side-by-side differences,
the curves overlaid in the compare dialog."""

import pytest

from acc.ui.tree import (COLORS, compare_keys, compare_options, deletion_refused, differences, fork_step, key_metrics,
                         smooth, tree_nodes)


def row(id, parent, step, metrics=None, tasks=(), branch=None):
    return {"id": id, "name": f"n{id}", "parent": parent, "step": step, "branch": branch, "created": step,
            "metrics": metrics or {}, "tasks": list(tasks), "model": {"name": "factor_slot"}}


def test_forks_show_as_siblings_under_their_parent():
    rows = [row("a", None, 10), row("b", "a", 20), row("c", "a", 20), row("d", "c", 30), row("e", "gone", 5)]
    roots = tree_nodes(rows)
    assert [n["id"] for n in roots] == ["a", "e"]  # a checkpoint whose parent was deleted is a root
    assert [n["id"] for n in roots[0]["children"]] == ["b", "c"]
    assert [n["id"] for n in roots[0]["children"][1]["children"]] == ["d"]
    assert roots[0]["label"] == "na · step 10"
    assert [n["current"] for n in roots] == [False, False]
    assert tree_nodes(rows, current="d")[0]["children"][1]["children"][0]["current"] is True


def test_key_metrics_prefer_evaluation():
    assert key_metrics({"loss/x": 0.5, "eval/x/mae": 0.25, "eval/x/r2": 0.75, "loss/y": None}) == \
        "x/mae=0.25  x/r2=0.75"


def test_differences_cover_tasks_weights_steps_and_metrics():
    recon = {"type": "ReconstructionTask", "name": "recon", "latent": "all", "dataset": "mnist", "weight": 1.0}
    a = row("a", None, 10, {"loss/recon": 0.5}, [recon], branch="main")
    b = row("b", "a", 30, {"loss/recon": 0.25, "loss/digit": 2.0},
            [{**recon, "weight": 0.5}, {**recon, "type": "ClassificationTask", "name": "digit", "latent": "digit"}],
            branch="fork")
    cpu = {"torch": "2.13.0+cpu", "device": "cpu", "ranks": 1, "cpu_capability": "AVX512", "threads": 2}
    b["trained_under"] = [cpu, {**cpu, "threads": 1}]
    table = {r["field"]: r for r in differences(a, b)}
    assert table["step"] == {"field": "step", "a": "10", "b": "30", "same": "≠"}
    assert table["trained under"] == {"field": "trained under", "a": "—", "same": "≠",
                                      "b": "cpu AVX512 · 2 threads · torch 2.13.0+cpu then "
                                           "cpu AVX512 · 1 thread · torch 2.13.0+cpu"}
    assert table["model"]["same"] == ""
    assert table["task recon"]["a"].endswith("weight 1") and table["task recon"]["b"].endswith("weight 0.5")
    assert table["task digit"]["a"] == "—" and "ClassificationTask on digit/mnist" in table["task digit"]["b"]
    assert table["loss/digit"]["a"] == "—" and table["loss/recon"]["b"] == "0.25"


def test_fork_step_is_the_nearest_common_ancestor():
    rows = {r["id"]: r for r in [row("a", None, 10), row("b", "a", 20), row("c", "a", 25), row("d", "c", 30),
                                  row("x", None, 7)]}
    assert fork_step(rows, "b", "d") == 10
    assert fork_step(rows, "c", "d") == 25  # one descends from the other: they part at the older
    assert fork_step(rows, "b", "x") is None


def test_compare_keys_put_shared_then_evaluation_first():
    a = {"loss/total": 1, "loss/recon": 1, "eval/recon/mse": 1, "lr": 1}
    b = {"loss/total": 1, "loss/digit": 1, "eval/recon/mse": 1}
    assert compare_keys(a, b) == ["eval/recon/mse", "loss/total", "loss/digit", "loss/recon"]


def test_smoothing_is_debiased():
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])


def test_each_checkpoint_keeps_its_color_and_the_fork_is_marked():
    points = {"step": [1, 2, 3], "value": [3.0, 2.0, 1.0]}
    options = compare_options("loss/digit", [("a", None), ("b", points)], forked_at=2)
    named = [s for s in options["series"] if s.get("name")]
    assert [(s["name"], s["color"]) for s in named] == [("b", COLORS[1])]
    assert named[0]["markLine"]["data"] == [{"xAxis": 2}]
    assert [p[0] for p in named[0]["data"]] == [1, 2, 3]


def test_deletion_is_offered_only_for_leaves_the_trainer_does_not_continue_from():
    rows = [row("a", None, 10), row("b", "a", 20), row("c", "a", 20)]
    assert "children" in deletion_refused(rows[0], rows, current="c")
    assert "continues" in deletion_refused(rows[2], rows, current="c")
    assert deletion_refused(rows[1], rows, current="c") is None
    assert deletion_refused(None, rows, current=None) == "select a node"
