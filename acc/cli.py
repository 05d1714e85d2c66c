"""`acc`: the command line (typer). `python -m acc` is the same."""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="ACC: train factored autoencoders, and see and steer them while they train.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Datasets: generate, list, MNIST download.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

WorkspaceOption = Annotated[Optional[Path], typer.Option(
    "--workspace", "-w", envvar="ACC_WORKSPACE", help="Workspace folder (store, checkpoints, caches).")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    min=1, help="Intra-op threads of training, held whatever runs beside it (default: torch's, fewer while an "
                "eval worker shares the CPU). A seed repeats bitwise only at one thread count.")]


def parse_options(pairs: list[str], where: str) -> dict[str, Any]:
    """`key=value` pairs; values are parsed as JSON when they can be (numbers, true, lists)."""
    options: dict[str, Any] = {}
    for pair in filter(None, pairs):
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value in option {pair!r} of {where!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def parse_task(spec: str) -> tuple[str, dict[str, Any]]:
    """`Type` or `Type:key=value,key=value`."""
    type_name, _, rest = spec.partition(":")
    return type_name.strip(), parse_options(rest.split(","), spec)


@app.command()
def train(
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 1000,
    model: Annotated[str, typer.Option(help="Model: factor_slot or conv_ae.")] = "factor_slot",
    task: Annotated[Optional[list[str]], typer.Option(
        help="Task to train, repeatable: Type or Type:key=value,... (default ReconstructionTask).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0)] = 1e-3,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    eval_every: Annotated[int, typer.Option(min=0, help="Steps between evaluations (0: only at the end).")] = 500,
    save: Annotated[Optional[str], typer.Option(help="Name of the checkpoint saved at the end.")] = "final",
    workspace: WorkspaceOption = None,
) -> None:
    """Train headless with a progress bar; metrics go to the workspace store."""
    from acc.engine import EngineConfig
    from acc.engine.session import Session

    config = EngineConfig(model={"name": model}, batch_size=batch_size, lr=lr, seed=seed, device=device,
                          eval_every=eval_every)
    with Session.open(workspace, config, watch=False) as session:
        engine = session.engine
        for spec in task or ["ReconstructionTask"]:
            type_name, options = parse_task(spec)
            try:
                engine.add_task(type_name, **options)
            except (KeyError, ValueError, TypeError) as e:
                console.print(f"[red]cannot add task {spec!r}:[/red] {e}")
                raise typer.Exit(2)
        console.print(f"run {engine.run_id} on {engine.device}, workspace {session.workspace.root}")
        done = engine.start(steps)
        columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}  {task.fields[rate]} samples/s"), TimeRemainingColumn()]
        start_step = engine.step
        try:
            with Progress(*columns, console=console) as progress:
                bar = progress.add_task("train", total=steps, loss="-", rate="-")
                while not done.done():
                    concurrent.futures.wait([done], timeout=0.25)  # wakes at once when training ends
                    last = engine.recent[-1][1] if engine.recent else {}
                    progress.update(bar, completed=engine.step - start_step,
                                    loss=f"{last.get('loss/total', float('nan')):.4f}",
                                    rate=f"{engine.samples_per_s:,.0f}")
        except KeyboardInterrupt:
            console.print("interrupted: stopping after the current step")
            engine.stop()
        for error in [t for t in engine.state()["tasks"] if t["error"]]:
            console.print(f"[red]task {error['name']} disabled:[/red] {error['error']}")
        results = engine.last_eval if engine.last_eval_step == engine.step else engine.evaluate()
        table = Table("task", "metric", "value", title=f"evaluation at step {engine.step}")
        for task_name, values in results.items():
            for key, value in values.items():
                table.add_row(task_name, key, f"{value:.4f}")
        console.print(table)
        if save:
            checkpoint = engine.save_checkpoint(save)
            console.print(f"checkpoint {checkpoint['name']!r} ({checkpoint['id']}) at {checkpoint['path']}")


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="Recipe class name (or snake_case), e.g. smoke.")],
    param: Annotated[Optional[list[str]], typer.Option(help="Recipe parameter key=value, repeatable.")] = None,
    seed: int = 0,
    device: str = "auto",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    eval_every: Annotated[int, typer.Option(min=0)] = 500,
    threads: ThreadsOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Run a recipe headless; checkpoints it already made (same recipe version) are reused."""
    from pydantic import ValidationError

    from acc.engine import EngineConfig
    from acc.engine.errors import error_text
    from acc.engine.recipes import find_recipe, run_recipe
    from acc.engine.session import Session

    config = EngineConfig(seed=seed, device=device, batch_size=batch_size, eval_every=eval_every, threads=threads)
    with Session.open(workspace, config, watch=False) as session:
        params = parse_options(param or [], "--param")
        try:  # a wrong name or parameter is the caller's mistake (exit 2), found before anything runs
            name = find_recipe(session.recipes, recipe).__name__
            session.recipes.get(name).Params.model_validate(params, strict=True)
        except KeyError as e:
            console.print(f"[red]{e.args[0]}[/red]")
            raise typer.Exit(2)
        except ValidationError as e:
            console.print(f"[red]invalid parameters for recipe {name}:[/red] {e}")
            raise typer.Exit(2)
        columns = [TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(name, total=None)
            try:
                result = run_recipe(session.engine, session.recipes, name, params, datasets=session.datasets,
                                    on_progress=lambda done, total: progress.update(bar, completed=done, total=total))
            except Exception as e:  # what the recipe raised, with the recipe line that asked for it
                console.print(f"[red]recipe failed:[/red] {error_text(e)}")
                raise typer.Exit(1)
        table = Table("checkpoint", "id", "parent", "step", title=f"{result.recipe} ({result.steps} steps)")
        for row in result.checkpoints:
            reused = " (reused)" if row["name"] in result.skipped else ""
            table.add_row(row["name"] + reused, row["id"], row["parent"] or "-", str(row["step"]))
        console.print(table)


@app.command("eval")
def eval_command(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint id or name (`acc checkpoints` lists them).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
    seeds: Annotated[int, typer.Option(min=1, max=10, help="Probe seeds (random halves) for UFR.")] = 3,
    workspace: WorkspaceOption = None,
) -> None:
    """Factoring evaluation of a checkpoint, headless: UFR and its parts, traversal cleanliness (the
    dashboard's evaluation page shows the same report with its figures)."""
    from acc.engine.session import Session
    from acc.eval.evaluator import FactoringConfig

    with Session.open(workspace, watch=False, engine=False) as session:
        try:
            job = session.factoring.start(checkpoint, FactoringConfig(seeds=seeds))
        except KeyError as e:
            console.print(f"[red]{e.args[0]}[/red]")
            raise typer.Exit(2)
        err = Console(stderr=True)
        with Progress(TextColumn("[bold]eval"), BarColumn(), TextColumn("{task.description}"),
                      console=err, transient=as_json) as progress:
            bar = progress.add_task("", total=1.0)
            while not job.done.wait(0.2):
                progress.update(bar, completed=job.progress)
            progress.update(bar, completed=1.0)
        if job.status != "done":
            console.print(f"[red]evaluation failed:[/red] {job.error}")
            raise typer.Exit(1)
        report = session.factoring.report(checkpoint)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    wide = Console(width=max(console.width, 110))  # the whole table, also into a pipe
    ufr, se = report["ufr"], report.get("ufr_se")
    score = "-" if ufr is None else f"{ufr:.3f}" + ("" if se is None else f" ± {se:.2g} (probe seeds)")
    table = Table("concept", "slot", "I", "tau", "L", "UFR", "traversal rho", "range", "class kept",
                  title=f"{report['name']} (step {report['step']}): UFR {score}")
    for name, c in report["concepts"].items():
        t = report["traversal"].get(name, {})
        cells = [c["I"], c["tau"], c["L"], c["ufr"], t.get("rho"), t.get("range"), t.get("class_kept")]
        table.add_row(name, c["slot"], *("-" if v is None else f"{v:.3f}" for v in cells))
    wide.print(table)
    wide.print(f"MIG {report['mig']['mig']:.3f} · DCI disentanglement {report['dci']['disentanglement']:.3f} "
                  f"({report['dci']['importance_model']}) · slots matched by rule: {report['assignment_rule']}")
    for line in report["parts_missing"] + report["notes"]:
        wide.print(f"[yellow]{line}[/yellow]")


@app.command()
def trainer(
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: int = 8765,
    token: Annotated[Optional[str], typer.Option(envvar="ACC_TOKEN", help="Bearer token clients must send.")] = None,
    model: Annotated[str, typer.Option(help="Model for a fresh run: factor_slot or conv_ae.")] = "factor_slot",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0)] = 1e-3,
    device: str = "auto",
    eval_every: Annotated[int, typer.Option(min=0)] = 500,
    autosave_every: Annotated[float, typer.Option(
        min=0, help="Seconds of training between autosaves (0: never).")] = 300.0,
    autosave_keep: Annotated[int, typer.Option(min=1, help="Autosaves kept in the workspace (newest).")] = 3,
    slow_task: Annotated[float, typer.Option(
        min=0, help="Seconds a task's loss may take per step before it is flagged slow.")] = 1.0,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start a new run instead of continuing the last one from its latest autosave.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of model initialisation, batches and recipes.")] = 0,
    eval_device: Annotated[Optional[str], typer.Option(
        help="Evaluate in a worker process on this device (e.g. cuda:1, or cpu), beside training.")] = None,
    ddp: Annotated[int, typer.Option(
        "--ddp", min=1, help="Data-parallel ranks on this box (one CUDA device each from --device on, or "
                             "CPU processes), each with a batch of --batch-size.")] = 1,
    threads: ThreadsOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Run the trainer service: the HTTP API, the engine thread, the file watchers and the store.
    It continues the workspace's last run from its latest autosave unless --fresh.
    Under torchrun (WORLD_SIZE > 1), rank 0 is the trainer and the other ranks only compute."""
    from acc.engine import EngineConfig
    from acc.engine.distributed import Ranks, environment_device
    from acc.server.app import serve
    from acc.server.auth import check_bind

    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        check_bind(host, token)
        if torchrun and ddp > 1:
            raise ValueError("--ddp starts ranks on this box; under torchrun, --nproc-per-node does")
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2)
    config = EngineConfig(model={"name": model}, batch_size=batch_size, lr=lr, seed=seed,
                          device=environment_device() if torchrun else device, eval_every=eval_every,
                          autosave_every_s=autosave_every, autosave_keep=autosave_keep, slow_task_s=slow_task,
                          eval_device=eval_device, ranks=ddp, threads=threads)
    ranks = Ranks.from_environment() if torchrun else None
    if ranks is not None and not ranks.leader:
        from acc.engine.follower import run_follower
        from acc.workspace import Workspace

        console.print(f"rank {ranks.rank} of {ranks.world} on {config.device}: following rank 0")
        run_follower(ranks, config, Workspace.resolve(workspace))
        return
    serve(host=host, port=port, workspace=workspace, token=token, config=config, restore=not fresh, ranks=ranks)


@app.command()
def ui(
    trainer_url: Annotated[str, typer.Option("--trainer", help="URL of the trainer service.")] = "http://127.0.0.1:8765",
    token: Annotated[Optional[str], typer.Option(envvar="ACC_TOKEN", help="The trainer's token.")] = None,
    host: Annotated[str, typer.Option(help="Interface the dashboard binds; beyond loopback needs --ui-token.")] = "127.0.0.1",
    port: int = 8080,
    ui_token: Annotated[Optional[str], typer.Option(
        "--ui-token", envvar="ACC_UI_TOKEN",
        help="Token the dashboard's login page asks for (pass the trainer's to use one token for both).")] = None,
) -> None:
    """Run the dashboard; it talks to the trainer only over HTTP, so it may run on a laptop."""
    from acc.server.auth import check_bind

    try:  # before NiceGUI is even imported
        check_bind(host, ui_token, what="dashboard", option="--ui-token", env="ACC_UI_TOKEN")
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2)
    from acc.ui.app import run_dashboard

    run_dashboard(trainer_url, token, host=host, port=port, ui_token=ui_token)


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Dashboard port.")] = 8080,
    trainer_port: int = 8765,
    start: Annotated[bool, typer.Option(help="Start training right away (pause it from the dashboard).")] = True,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start a new run instead of continuing the last one from its latest autosave.")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Trainer and dashboard on this machine in one command (embedded defaults); prints the URL."""
    import socket
    import subprocess
    import sys
    import time

    from nicegui import app as dashboard_app

    from acc.ui.app import run_dashboard
    from acc.ui.client import TrainerClient, TrainerError

    for what, number, option in (("trainer", trainer_port, "--trainer-port"), ("dashboard", port, "--port")):
        # Checked first: else the dashboard would quietly attach to whatever trainer holds the port.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed one's TIME_WAIT is no owner
            try:
                probe.bind(("127.0.0.1", number))
            except OSError:
                console.print(f"[red]port {number} is in use (another acc up or trainer?); "
                              f"stop it, or pick another {what} port with {option}[/red]")
                raise typer.Exit(1) from None

    command = [sys.executable, "-m", "acc", "trainer", "--port", str(trainer_port)]
    if workspace:
        command += ["--workspace", str(workspace)]
    if fresh:
        command.append("--fresh")
    trainer_process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{trainer_port}"

    def stop_trainer() -> None:  # SIGTERM ends the dashboard's server without unwinding to `finally`
        if trainer_process.poll() is None:
            trainer_process.terminate()
            trainer_process.wait(10)

    dashboard_app.on_shutdown(stop_trainer)
    try:
        with TrainerClient(url) as client:
            deadline = time.monotonic() + 60
            while True:  # wait for the trainer to answer before opening the dashboard
                try:
                    state = client.state()
                    break
                except TrainerError:
                    if trainer_process.poll() is not None or time.monotonic() > deadline:
                        console.print("[red]the trainer did not start; see its output above[/red]")
                        raise typer.Exit(1)
                    time.sleep(0.2)
            if not state["tasks"]:
                client.add_task("ReconstructionTask")
            if start and state["status"] != "running":
                client.train("start")
        console.print(f"[bold green]ACC dashboard: http://127.0.0.1:{port}[/bold green]  (trainer {url})")
        run_dashboard(url, None, port=port)
    finally:
        stop_trainer()


@app.command()
def checkpoints(workspace: WorkspaceOption = None) -> None:
    """List the checkpoints of the workspace."""
    from acc.store import Store
    from acc.workspace import Workspace

    ws = Workspace.resolve(workspace)
    with Store(ws.db_path) as store:
        rows = store.checkpoints()
    table = Table("id", "name", "step", "parent", "run", "tasks", "created")
    for row in rows:
        tasks = ", ".join(t["name"] for t in row["meta"].get("tasks", []))
        created = datetime.datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(row["id"], row["name"], str(row["step"]), row["parent"] or "-", str(row["run_id"]),
                      tasks, created)
    console.print(table if rows else f"no checkpoints in {ws.root}")


@data_app.command("fetch-mnist")
def fetch_mnist_command(
    dest: Annotated[Optional[Path], typer.Option(help="Folder for the IDX files (default: workspace cache).")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Download the four MNIST IDX files (checksums verified)."""
    from acc.mnist import fetch_mnist
    from acc.workspace import Workspace

    target = dest or Workspace.resolve(workspace).mnist_dir
    try:
        paths = fetch_mnist(target)
    except RuntimeError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1)
    console.print(f"MNIST ready in {target}: {', '.join(p.name for p in paths)}")


@data_app.command("generate")
def generate_command(
    generator: Annotated[str, typer.Argument(help="A generator class, e.g. ThicknessGenerator.")],
    name: Annotated[str, typer.Argument(help="The new dataset's name ([a-z0-9_-]).")],
    n: Annotated[int, typer.Option(min=1, help="Number of images.")] = 5000,
    seed: int = 0,
    param: Annotated[Optional[list[str]], typer.Option(help="A generator parameter, key=value (repeatable).")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Generate a dataset headless (the dashboard's [+ Dataset] does the same in a running trainer)."""
    from acc.engine.errors import error_text
    from acc.engine.session import Session

    with Session.open(workspace, watch=False, engine=False) as session:
        with Progress(TextColumn(f"[bold]{name}"), BarColumn(), TimeRemainingColumn(), console=console) as progress:
            bar = progress.add_task(name, total=1.0)
            try:
                info = session.datasets.generate(generator, name, n, seed, parse_options(param or [], "--param"),
                                                 progress=lambda done: progress.update(bar, completed=done))
            except (KeyError, ValueError) as e:  # a bad request: its message says what to change
                console.print(f"[red]{e.args[0]}[/red]")
                raise typer.Exit(2)
            except Exception as e:  # the generator's own code failed: say where
                console.print(f"[red]generation failed:[/red] {error_text(e)}")
                raise typer.Exit(1)
    console.print(f"{info['name']}: {info['n']} images, targets {', '.join(info['targets']) or 'none'}, "
                  f"in {session.datasets.path_of(name)}")


@data_app.command("list")
def list_command(workspace: WorkspaceOption = None) -> None:
    """The datasets a trainer on this workspace can train on, and generations that failed."""
    from acc.engine.session import Session

    with Session.open(workspace, watch=False, engine=False) as session:
        rows = session.datasets.list()
    table = Table("name", "images", "status", "generator", "params", "targets")
    for row in rows:
        table.add_row(row["name"], str(row["n"]), row["status"] if not row["error"] else f"{row['status']}: {row['error']}",
                      row["generator"] or "-", json.dumps(row["params"]), ", ".join(row["targets"]))
    console.print(table)


if __name__ == "__main__":
    app()
