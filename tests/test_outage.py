"""A tracking-server outage: training keeps going, sends what it kept when the server is back
(or, if it is still down at the end, says so in one line and resends on the rerun), and the
result is one complete run, identical to an uninterrupted one. No traceback anywhere."""
from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, env_with_venv, free_port, make_tiny_project, run, tiny_params, write_params

pytestmark = pytest.mark.slow

EPOCHS = 8
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


def outage_params(experiment: str) -> dict:
    params = tiny_params(prepare={}, tracking={"experiment": experiment})
    params["prepare"]["synthetic"].update(n_train=500)
    params["train_cnn4"]["epochs"] = EPOCHS
    return params


def epochs_saved(checkpoint: Path) -> int:
    if not checkpoint.is_file():
        return 0
    return len(torch.load(checkpoint, map_location="cpu", weights_only=True)["history"])


def wait_until(condition, what: str, process: subprocess.Popen | None = None, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"training ended before {what}: {process.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_training(project: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.train", "--model", "cnn4"], cwd=project,
                            env=env_with_venv() | env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def comparable_history(project: Path) -> list[dict[str, str]]:
    with open(project / "results" / "history" / "cnn4.csv") as handle:
        return [{k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_second")}
                for row in csv.DictReader(handle)]


def weights(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "models" / "cnn4" / "model.pt", weights_only=True)["state_dict"]


def assert_one_complete_run(server_url: str, experiment: str) -> None:
    client = MlflowClient(server_url)
    runs = [r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
            if r.info.run_name == "cnn4"]
    assert len(runs) == 1, [r.info.run_id for r in runs]
    assert runs[0].info.status == "FINISHED"
    for metric in METRICS:
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, metric)]
        assert steps == list(range(1, EPOCHS + 1)), (metric, steps)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same training without any outage (local store)."""
    project = make_tiny_project(tmp_path_factory.mktemp("reference") / "project", outage_params("reference"))
    run([sys.executable, "-m", "stages.prepare"], project)
    run([sys.executable, "-m", "stages.train", "--model", "cnn4"], project)
    return project


@contextlib.contextmanager
def training_until_epoch_2(server, project: Path) -> Iterator[subprocess.Popen]:
    """Prepare, start training against `server`, yield the training process once the resume
    state holds 2 epochs; the process is killed on the way out if it still runs."""
    env = {"MLFLOW_TRACKING_URI": server.url}
    run([sys.executable, "-m", "stages.prepare"], project, env=env)
    training = start_training(project, env)
    try:
        wait_until(lambda: epochs_saved(project / "checkpoints" / "cnn4.pt") >= 2, "epoch 2", training)
        yield training
    finally:
        if training.poll() is None:
            training.kill()


def test_training_rides_out_a_server_outage(mlflow_server, tmp_path: Path, reference: Path) -> None:
    project = make_tiny_project(tmp_path / "project", outage_params("outage"))
    checkpoint = project / "checkpoints" / "cnn4.pt"
    with training_until_epoch_2(mlflow_server, project) as training:
        mlflow_server.kill()
        # Once epoch k + 2 is saved, epoch k + 1's metrics were offered to the dead server.
        down_from = epochs_saved(checkpoint) + 1
        assert down_from + 1 < EPOCHS, "training outran the test; give it more epochs"
        wait_until(lambda: epochs_saved(checkpoint) > down_from, f"epoch {down_from + 1}", training)
        training.send_signal(signal.SIGSTOP)
        mlflow_server.start()  # same store, same port
        training.send_signal(signal.SIGCONT)
        stdout, stderr = training.communicate(timeout=600)
    assert training.returncode == 0, stderr
    assert "Traceback" not in stdout + stderr
    assert "unreachable" in stderr and "answers again" in stderr
    assert_one_complete_run(mlflow_server.url, "outage")
    assert comparable_history(project) == comparable_history(reference)
    assert all(torch.equal(a, b) for a, b in zip(weights(project).values(), weights(reference).values()))
    assert not checkpoint.exists()


def test_server_still_down_at_the_end_then_resent_by_a_rerun(mlflow_server, tmp_path: Path,
                                                              reference: Path) -> None:
    project = make_tiny_project(tmp_path / "project", outage_params("late"))
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    checkpoint = project / "checkpoints" / "cnn4.pt"
    with training_until_epoch_2(mlflow_server, project) as training:
        mlflow_server.kill()
        stdout, stderr = training.communicate(timeout=600)
    assert training.returncode == 1
    assert "Traceback" not in stdout + stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking server {mlflow_server.url} does not answer"), last
    assert "dvc repro train_cnn4" in last
    assert (project / "models" / "cnn4" / "model.pt").is_file()  # the outputs are written
    assert (project / "checkpoints" / "cnn4.unsent.json").is_file() and checkpoint.is_file()

    mlflow_server.start()
    rerun = run([sys.executable, "-m", "stages.train", "--model", "cnn4"], project, env=env)
    assert "Traceback" not in rerun.stdout + rerun.stderr
    assert f"resuming cnn4 after epoch {EPOCHS}" in rerun.stdout
    assert_one_complete_run(mlflow_server.url, "late")
    assert comparable_history(project) == comparable_history(reference)
    assert not (project / "checkpoints" / "cnn4.unsent.json").exists() and not checkpoint.exists()


@pytest.mark.parametrize("stage", ["prepare", "train", "evaluate", "visualize", "photos", "report"])
def test_stage_fails_fast_when_the_server_is_down(stage: str, tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml", tiny_params())
    os.symlink(ROOT / "fer", tmp_path / "fer")
    os.symlink(ROOT / "stages", tmp_path / "stages")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    command = [sys.executable, "-m", f"stages.{stage}"] + (["--model", "cnn4"] if stage == "train" else [])
    started = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=env_with_venv() | {"MLFLOW_TRACKING_URI": uri},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: tracking server {uri} does not answer "
                                                  "([Errno 111] Connection refused); start it (make mlflow-server) "
                                                  "or unset MLFLOW_TRACKING_URI to use the local store"]
    assert time.monotonic() - started < 60
