"""Team scale, for real: a shared `mlflow server` (SQLite, or PostgreSQL where installed), a DVC
remote, queued experiments with two workers, and three clones of one bare git repository
standing in for three machines. One pipeline run is shared by every test of this module."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import MlflowServer, env_with_venv, make_tiny_project, run, tiny_params

pytestmark = pytest.mark.slow

QUEUED_LRS = (0.0011, 0.0012, 0.0013)  # distinct params: an experiment DVC has seen is not rerun
MACHINE_B_LR = 0.0021


def team_params() -> dict:
    """Tiny params with the cheapest visualize (each experiment reruns it): what is tested here
    is where things go, not the pictures."""
    return tiny_params(visualize={"filters.layers": "last", "filters.steps": 1, "methods.smoothgrad.samples": 1,
                                  "methods.integrated_gradients.steps": 2, "sanity.images": 4,
                                  "sanity.expensive_images": 1, "sanity.deletion_steps": 2})


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def metrics_json(project: Path) -> dict:
    return json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)


def workspace_metrics(project: Path) -> dict:
    """`dvc metrics show`'s numbers for the workspace, by file."""
    shown = metrics_json(project)
    (revision,) = shown.values() if len(shown) == 1 else [shown["workspace"]]
    return {path: entry["data"] for path, entry in revision["data"].items()}


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory):
    """A tracking server, a bare `origin` repository, a DVC remote directory, and the pipeline
    run once against the server, committed, pushed to origin and `dvc push`ed."""
    root = tmp_path_factory.mktemp("team")
    server = MlflowServer(root / "server")
    try:
        server.start()
        env = {"MLFLOW_TRACKING_URI": server.url}
        origin, remote = root / "origin.git", root / "dvc-remote"
        run(["git", "init", "-q", "--bare", str(origin)], root)
        project = make_tiny_project(root / "first", team_params())
        first = run(["dvc", "repro"], project, env=env)
        run(["dvc", "remote", "add", "-d", "shared", str(remote)], project)
        run(["git", "add", "-A"], project)
        run(["git", "commit", "-qm", "baseline"], project)
        run(["git", "remote", "add", "origin", str(origin)], project)
        run(["git", "push", "-q", "origin", "HEAD:main"], project)
        run(["dvc", "push"], project)
        yield {"server": server, "env": env, "origin": origin, "remote": remote, "project": project,
               "root": root, "first_output": first.stdout}
    finally:
        server.stop()


def clone(team: dict, name: str) -> Path:
    """A fresh clone of origin (another machine) with the outputs pulled from the DVC remote."""
    path = team["root"] / name
    run(["git", "clone", "-q", "-b", "main", str(team["origin"]), str(path)], team["root"])
    run(["dvc", "pull"], path)
    return path


def test_pipeline_logs_everything_to_the_tracking_server(team: dict) -> None:
    project, server = team["project"], team["server"]
    assert stages_run(team["first_output"]) == ["prepare", "train_cnn4", "train_cnn3", "train_resnet9", "evaluate",
                                                "visualize", "photos", "report"]
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()

    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name(team_params()["tracking"]["experiment"])
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    epochs = team_params()["train_cnn4"]["epochs"]
    for name in ("cnn4", "cnn3"):
        run_id = runs[name].info.run_id
        assert runs[name].info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run_id, "val_acc")]
        assert steps == list(range(1, epochs + 1)), (name, steps)
        assert "test_accuracy" in runs[f"evaluate-{name}"].data.metrics
        # The artifacts are files in the server's artifact destination, not in the clone.
        for run_name, expected in ((name, "history.csv"), (f"evaluate-{name}", "confusion_val.png"),
                                   ("report", "report.html")):
            stored = {p.name for p in (server.artifacts / experiment.experiment_id / runs[run_name].info.run_id
                                       ).rglob("*") if p.is_file()}
            assert expected in stored, (run_name, sorted(stored)[:20])
        registered = f"{team_params()['tracking']['registered_model_prefix']}{name}"
        versions = client.search_model_versions(f"name = '{registered}'", order_by=["version_number DESC"])
        assert versions and versions[0].run_id == run_id
        assert client.get_model_version_by_alias(registered, "champion").run_id == run_id


def test_second_clone_pulls_outputs_and_runs_nothing(team: dict) -> None:
    second = clone(team, "second")
    assert stages_run(run(["dvc", "repro"], second).stdout) == []
    assert (second / "models" / "cnn4" / "model.pt").is_file()
    assert (second / "reports" / "report.html").is_file()
    assert workspace_metrics(second) == workspace_metrics(team["project"])


def test_queued_sweep_and_experiments_from_two_machines(team: dict) -> None:
    env, server = team["env"], team["server"]
    machine_a = clone(team, "machine-a")
    for lr in QUEUED_LRS:
        run(["dvc", "exp", "run", "--queue", "-S", f"train_cnn3.lr={lr}"], machine_a, env=env)
    # The workspace moves on before the queue runs: the runs must name the commit they ran.
    baseline = run(["git", "rev-parse", "HEAD"], machine_a).stdout.strip()
    (machine_a / "NOTES.md").write_text("a commit made while experiments wait in the queue\n")
    run(["git", "add", "NOTES.md"], machine_a)
    run(["git", "commit", "-qm", "notes"], machine_a)
    try:
        start_queue(machine_a, workers=2, env=env | {"OMP_NUM_THREADS": "1"})
        wait_for_queue(machine_a, timeout_s=480, experiments=len(QUEUED_LRS))
    finally:
        stop_workers(machine_a)
    names_a = experiment_names(machine_a)
    assert len(names_a) == len(QUEUED_LRS), names_a
    assert not list(machine_a.glob("mlflow.db*")), "a queued experiment wrote into the clone"

    machine_b = clone(team, "machine-b")
    run(["dvc", "exp", "run", "-n", "machine-b-exp", "-S", f"train_cnn3.lr={MACHINE_B_LR}"], machine_b, env=env)
    pushed_a = sorted(names_a)[0]
    run(["dvc", "exp", "push", "origin", pushed_a], machine_a)
    run(["dvc", "exp", "push", "origin", "machine-b-exp"], machine_b)

    # A third machine sees both experiments with their metrics and restores one without training.
    machine_c = clone(team, "machine-c")
    run(["dvc", "exp", "pull", "origin", pushed_a, "machine-b-exp"], machine_c)
    shown = run(["dvc", "exp", "show", "--no-pager", "--md"], machine_c).stdout
    assert pushed_a in shown and "machine-b-exp" in shown and str(MACHINE_B_LR) in shown
    run(["dvc", "exp", "apply", "machine-b-exp"], machine_c)
    run(["dvc", "pull"], machine_c)
    assert stages_run(run(["dvc", "repro"], machine_c).stdout) == []
    assert workspace_metrics(machine_c) == workspace_metrics(machine_b)
    assert yaml.safe_load((machine_c / "params.yaml").read_text())["train_cnn3"]["lr"] == MACHINE_B_LR

    # The server holds a cnn3 run per experiment, tagged with its DVC experiment name.
    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name(team_params()["tracking"]["experiment"])
    tagged = {r.data.tags.get("dvc_exp_name"): r for r in client.search_runs([experiment.experiment_id])
              if r.info.run_name == "cnn3"}
    assert set(names_a) | {"machine-b-exp"} <= set(tagged), sorted(k for k in tagged if k)
    for name in [*names_a, "machine-b-exp"]:
        assert tagged[name].info.status == "FINISHED"
        assert float(tagged[name].data.params["lr"]) in (*QUEUED_LRS, MACHINE_B_LR)
    for name in names_a:
        tags = tagged[name].data.tags
        assert tags["git_commit"] == tags["mlflow.source.git.commit"] == baseline, name


def experiment_names(project: Path) -> list[str]:
    shown = json.loads(run(["dvc", "exp", "show", "--json", "--all-commits"], project).stdout)
    return [exp["name"] for commit in shown for exp in (commit.get("experiments") or []) if exp.get("name")]


def start_queue(project: Path, workers: int, env: dict[str, str]) -> None:
    """`dvc queue start`, its output to a file rather than a pipe: the workers it forks inherit
    its output, so reading a pipe to its end would wait for every worker to exit, and a DVC 3
    worker was seen to stay alive after its monitor shut down on an empty queue."""
    log = project / ".dvc" / "tmp" / "queue-start.log"
    with log.open("w") as out:
        result = subprocess.run(["dvc", "queue", "start", "-j", str(workers)], cwd=project,
                                env=env_with_venv() | env, stdout=out, stderr=subprocess.STDOUT, timeout=120)
    assert result.returncode == 0, log.read_text()


def stop_workers(project: Path) -> None:
    """Kill the queue's worker processes still alive (see `start_queue`)."""
    for pid_file in (project / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def wait_for_queue(project: Path, timeout_s: float, experiments: int) -> None:
    """Until `dvc queue status` has nothing queued or running and `dvc exp show` lists
    `experiments` experiments (under load, a finished task's experiment was seen to show up a
    moment after its status); fail with the logs otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            assert "Failed" not in status, status
            if len(experiment_names(project)) >= experiments:
                return
        time.sleep(3)
    run(["dvc", "queue", "stop", "--kill"], project, check=False)
    raise AssertionError(f"queue did not finish with {experiments} experiments within {timeout_s} s:\n{status}")


@pytest.mark.skipif(not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")),
                    reason="PostgreSQL is not installed (Debian package postgresql)")
def test_postgresql_backed_server_stores_runs(tmp_path: Path) -> None:
    """The PostgreSQL backend of scripts/mlflow-server: a run, a metric and an artifact go through
    the server. (The data directory must be traversable by the postgres user.)"""
    import tempfile

    import mlflow

    directory = Path(tempfile.mkdtemp(prefix="fer-pg-", dir="/tmp"))
    directory.chmod(0o755)
    server = MlflowServer(directory / "server", backend="postgres")
    previous_uri = mlflow.get_tracking_uri()
    try:
        server.start()
        assert (server.directory / "backend").read_text().strip() == "postgres"
        mlflow.set_tracking_uri(server.url)
        (tmp_path / "note.txt").write_text("hello")
        experiment_id = mlflow.create_experiment("pg-check")
        with mlflow.start_run(experiment_id=experiment_id) as active:
            mlflow.log_metric("val_acc", 0.5, step=1)
            mlflow.log_artifact(str(tmp_path / "note.txt"))
        client = MlflowClient(server.url)
        assert [m.value for m in client.get_metric_history(active.info.run_id, "val_acc")] == [0.5]
        assert list(server.artifacts.rglob("note.txt"))
    finally:
        server.stop()
        mlflow.set_tracking_uri(previous_uri)
        shutil.rmtree(directory, ignore_errors=True)


def test_experiment_with_a_local_artifact_location_is_refused_by_name(team: dict, tmp_path: Path) -> None:
    """An experiment created in a local store keeps artifacts on one machine: against a server the
    stages stop with a message instead of silently writing artifacts into the clone."""
    client = MlflowClient(team["server"].url)
    client.create_experiment("copied-from-local", artifact_location=(tmp_path / "mlartifacts").as_uri())
    params = team_params()
    params["tracking"]["experiment"] = "copied-from-local"
    other = tmp_path / "params.yaml"
    other.write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "stages.prepare", "--params", str(other), "--out", str(tmp_path / "prepared")],
                 team["project"], check=False, env=team["env"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: experiment 'copied-from-local' on {team['server'].url} keeps its artifacts in "
        f"{(tmp_path / 'mlartifacts').as_uri()}, a directory of one machine, so they would never reach the server; "
        "set tracking.experiment in params.yaml to a new name (the server then stores the artifacts itself)")
    assert not (tmp_path / "mlartifacts").exists()
