"""fer.tracking on a real SQLite store: where artifacts go, exactly-once epoch logging, a run that
is gone from the store, and several processes writing at once."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fer import tracking
from fer.training import EpochRecord
from tests.conftest import ROOT, env_with_venv


def record(epoch: int) -> EpochRecord:
    return EpochRecord(epoch, 1.0 / epoch, 0.5, 1.1, 0.4 + epoch / 100, 0.01, 1.0, 100.0)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_artifacts_beside_a_sqlite_store_and_chosen_by_a_server(tmp_path: Path) -> None:
    assert tracking.artifact_location(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path / "mlartifacts").as_uri()
    assert tracking.artifact_location("http://127.0.0.1:5000") is None
    assert tracking.is_server("https://mlflow.example.org") and not tracking.is_server("sqlite:///x.db")


def test_local_store_uses_write_ahead_logging(store: str) -> None:
    import sqlite3

    tracking.open_run("exp", "cnn4")
    with sqlite3.connect(tracking.sqlite_path(store)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_epoch_log_sends_each_epoch_exactly_once(store: str) -> None:
    run_id = tracking.open_run("exp", "cnn4", params={"lr": 0.1, "model": {"arch": "cnn4"}})
    log = tracking.EpochLog(run_id)
    for epoch in (1, 2, 3):
        log(record(epoch))
    # A resumed stage hands over its whole history: only the epochs the run lacks are sent.
    resumed = tracking.EpochLog(run_id, [record(e) for e in range(1, 6)])
    assert resumed.pending == []
    client = MlflowClient(store)
    for key in ("val_acc", "train_loss", "lr"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4, 5]
    assert client.get_run(run_id).data.params == {"lr": "0.1", "model.arch": "cnn4"}


def test_epoch_log_keeps_records_while_the_server_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    log = tracking.EpochLog("some-run")
    with caplog.at_level(logging.WARNING, logger="fer.tracking"):
        log(record(1))
        log(record(2))
    assert [r.epoch for r in log.pending] == [1, 2]
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1  # warned once


def test_a_run_missing_from_the_store_becomes_a_new_run(store: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fer.tracking"):
        run_id = tracking.open_run("exp", "cnn4", run_id="0" * 32)
    assert run_id != "0" * 32
    assert MlflowClient(store).get_run(run_id).info.run_name == "cnn4"
    assert any("is not in" in r.getMessage() for r in caplog.records)


WRITER = """
import sys
from fer import tracking
from fer.training import EpochRecord
run_id = tracking.open_run("concurrent", f"writer{sys.argv[1]}")
log = tracking.EpochLog(run_id)
for epoch in range(1, 21):
    log(EpochRecord(epoch, 1.0, 0.5, 1.0, 0.5, 0.01, 1.0, 1.0))
assert not log.pending
print(run_id)
"""


def test_concurrent_writers_to_one_sqlite_store_lose_nothing(store: str) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)], cwd=ROOT, text=True,
                                env=env_with_venv() | {"MLFLOW_TRACKING_URI": store},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    results = [w.communicate(timeout=300) for w in writers]
    assert all(w.returncode == 0 for w in writers), [err for _, err in results]
    client = MlflowClient(store)
    for out, _ in results:
        steps = [m.step for m in client.get_metric_history(out.strip(), "val_acc")]
        assert steps == list(range(1, 21))


def test_a_relative_sqlite_store_is_taken_from_the_project_root(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `dvc exp run --temp` and the queue the working directory is a throw-away copy."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/team.db?timeout=30")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/stores/team.db?timeout=30"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert tracking.tracking_uri() == "sqlite:////elsewhere/mlflow.db"


def test_mlflow_experiment_name_overrides_the_configured_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert tracking.experiment_name("fer-pipeline") == "fer-pipeline"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    assert tracking.experiment_name("fer-pipeline") == "mine"


def test_runs_carry_context_tags_and_the_experiments_baseline_commit(store: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", baseline)
    monkeypatch.setenv("DVC_STAGE", "train_cnn4")
    tags = MlflowClient(store).get_run(tracking.open_run("exp", "cnn4")).data.tags
    assert tags["git_commit"] == tags["mlflow.source.git.commit"] == baseline
    assert tags["dvc_stage"] == "train_cnn4" and tags["model"] == "cnn4"
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"


def test_a_failed_run_is_marked_and_a_resumed_one_runs_again(store: str) -> None:
    client = MlflowClient(store)
    run_id = tracking.open_run("exp", "cnn4")
    tracking.end_run(run_id, "KILLED")
    assert client.get_run(run_id).info.status == "KILLED"
    assert tracking.open_run("exp", "cnn4", run_id=run_id) == run_id  # a resumed training continues it
    assert client.get_run(run_id).info.status == "RUNNING"
    tracking.end_run(run_id, "FAILED")
    assert client.get_run(run_id).info.status == "FAILED"


def test_marking_a_run_when_the_server_is_down_only_warns(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with caplog.at_level(logging.WARNING, logger="fer.tracking"):
        tracking.end_run("some-run", "FAILED")
    assert any("could not mark MLflow run some-run FAILED" in r.getMessage() for r in caplog.records)


def test_stage_runs_are_children_of_the_training_run_with_their_own_params(store: str, tmp_path: Path) -> None:
    from fer.io import write_json

    training = tracking.open_run("exp", "cnn4")
    write_json(tmp_path / "cnn4" / "run.json", {"run_id": training})
    seen = []
    tracking.stage_runs("exp", "evaluate", tmp_path, ["cnn4"], {"tta_flip": True}, seen.append)
    [model] = seen
    assert model == tracking.TrainedModel("cnn4", training, None)
    client = MlflowClient(store)
    [child] = [r for r in client.search_runs([client.get_experiment_by_name("exp").experiment_id])
               if r.info.run_name == "evaluate-cnn4"]
    assert child.data.tags["mlflow.parentRunId"] == training and child.data.params == {"tta_flip": "True"}
    assert child.info.status == "FINISHED"
