"""The checkpoint tree's pure parts: nesting by parent, headline metrics, side-by-side differences."""

from acc.ui.tree import differences, key_metrics, tree_nodes


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


def test_key_metrics_prefer_evaluation():
    assert key_metrics({"loss/x": 0.5, "eval/x/mae": 0.25, "eval/x/r2": 0.75, "loss/y": None}) == \
        "x/mae=0.25  x/r2=0.75"


def test_differences_cover_tasks_weights_steps_and_metrics():
    recon = {"type": "ReconstructionTask", "name": "recon", "latent": "all", "dataset": "mnist", "weight": 1.0}
    a = row("a", None, 10, {"loss/recon": 0.5}, [recon], branch="main")
    b = row("b", "a", 30, {"loss/recon": 0.25, "loss/digit": 2.0},
            [{**recon, "weight": 0.5}, {**recon, "type": "ClassificationTask", "name": "digit", "latent": "digit"}],
            branch="fork")
    table = {r["field"]: r for r in differences(a, b)}
    assert table["step"] == {"field": "step", "a": "10", "b": "30", "same": "≠"}
    assert table["model"]["same"] == ""
    assert table["task recon"]["a"].endswith("weight 1") and table["task recon"]["b"].endswith("weight 0.5")
    assert table["task digit"]["a"] == "—" and "ClassificationTask on digit/mnist" in table["task digit"]["b"]
    assert table["loss/digit"]["a"] == "—" and table["loss/recon"]["b"] == "0.25"
