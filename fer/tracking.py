"""Everything MLflow: where the store is, runs, and logging that survives a store outage.

The only module that uses mlflow, and it imports it lazily, so that the library (and the
`prepare` stage's start-up) stays fast and testable without a tracking store.

Two deployments, one code path:
- **local** (the default): the SQLite file `mlflow.db` at the DVC root (`DVC_ROOT`, set by DVC
  for every stage, including `dvc exp run --temp` and queued copies), artifacts in
  `mlartifacts/` beside it. A `sqlite:///` `MLFLOW_TRACKING_URI` elsewhere works the same way.
- **server** (`MLFLOW_TRACKING_URI=http://...`): a shared `mlflow server`. The server chooses
  where artifacts go (with `--artifacts-destination`, clients upload through it as
  `mlflow-artifacts:`), so nothing is written into the clone. Every call has a bounded wait, and
  training keeps going through an outage (`EpochLog`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib
import logging
import os
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fer import FerError

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# MLflow's own defaults retry an unreachable server for minutes; a stage waits seconds.
# Explicit environment settings win.
SERVER_REQUEST_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                           "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
HEALTH_TIMEOUT_S = 5.0
# The metric whose logged steps tell which epochs a run already has (an epoch's metrics go in
# one batch, so one key stands for all).
EPOCH_SENTINEL = "val_acc"
# Concurrent writers to one SQLite file can get "database is locked" (a deferred transaction
# cannot wait for another writer); such a write is retried after a short pause.
LOCKED_RETRIES = 8


class TrackingError(FerError):
    """The tracking store cannot be used as configured (unreachable server, wrong experiment)."""


class TrackingUnavailable(TrackingError):
    """The tracking server did not answer."""


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DB_NAME}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (`sqlite:////abs` is absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite store, else the server's choice."""
    db = sqlite_path(uri)
    return (db.resolve().parent / ARTIFACTS_DIR).as_uri() if db is not None else None


def check_reachable(uri: str | None = None, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise TrackingUnavailable, within `timeout` seconds, when a tracking server does not
    answer its health check. Local stores always pass."""
    uri = uri or tracking_uri()
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (OSError, urllib.error.URLError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingUnavailable(f"tracking server {uri} does not answer ({reason}); start it "
                                  "(make mlflow-server) or unset MLFLOW_TRACKING_URI to use the local store") from None


def preload() -> None:
    """Start importing mlflow (about 2 s) in the background, so that a stage whose first part does
    not track (reading a data file, say) overlaps the two."""
    threading.Thread(target=importlib.import_module, args=("mlflow",), daemon=True).start()


def connect() -> str:
    """Point mlflow at the store (bounded waits for a server, WAL for SQLite); return the URI.
    Fails in seconds, with one line naming the URI, when a server does not answer."""
    import mlflow

    uri = tracking_uri()
    if is_server(uri):
        for key, value in SERVER_REQUEST_DEFAULTS.items():
            os.environ.setdefault(key, value)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    _enable_wal(uri)
    return uri


def _enable_wal(uri: str) -> None:
    """Create a SQLite store's schema under a lock (two queued experiments starting on a fresh
    clone would otherwise both create it, and one fails) and switch it to write-ahead logging,
    which lets readers and one writer work at once. The mode is stored in the file."""
    db = sqlite_path(uri)
    if db is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    directory = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        if not db.exists() or db.stat().st_size == 0:
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).search_experiments(max_results=1)  # creates the schema
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
    finally:
        os.close(directory)  # releases the lock


def _is_locked(error: BaseException) -> bool:
    return "database is locked" in str(error)


def retry_locked(call: Callable[[], Any]) -> Any:
    """Run a store write, retrying a bounded number of times on SQLite's "database is locked"."""
    for attempt in range(LOCKED_RETRIES - 1):
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - MlflowException or sqlalchemy's OperationalError
            if not _is_locked(error):
                raise
            time.sleep(0.2 * 2 ** attempt)
    return call()  # the last try: whatever it raises reaches the caller


@contextlib.contextmanager
def _outage_as_error(uri: str) -> Iterator[None]:
    """Turn a failure caused by an unreachable server into one TrackingUnavailable line."""
    try:
        yield
    except TrackingError:
        raise
    except Exception:
        if is_server(uri):
            check_reachable(uri)  # raises TrackingUnavailable when that was the cause
        raise


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "none"


def _experiment_id(name: str, uri: str) -> str:
    import mlflow

    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            return retry_locked(lambda: mlflow.create_experiment(name, artifact_location=artifact_location(uri)))
        except MlflowException as error:  # another stage or experiment created it meanwhile
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = mlflow.get_experiment_by_name(name)
    location = experiment.artifact_location or ""
    if is_server(uri) and (location.startswith("file:") or location.startswith("/")):
        raise TrackingError(
            f"experiment '{name}' on {uri} keeps its artifacts in {location}, a directory of one machine, "
            "so they would never reach the server; set tracking.experiment in params.yaml to a new name "
            "(the server then stores the artifacts itself)")
    return experiment.experiment_id


def _existing_run(run_id: str | None, run_name: str, uri: str) -> str | None:
    """`run_id` if the store has it; else None, with a one-line warning (e.g. after
    `make clean-mlflow`), so that the caller starts a new run instead of crashing."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        if MlflowClient(uri).get_run(run_id).info.lifecycle_stage != "deleted":
            return run_id
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    log.warning("MLflow run %s of %s is not in %s (or was deleted); logging into a new run", run_id, run_name, uri)
    return None


def _new_run_tags(run_name: str) -> dict[str, str]:
    tags = {"git_commit": git_commit(project_root()), "model": run_name}
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp_name")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def open_run(experiment: str, run_name: str, run_id: str | None = None,
             params: Mapping[str, Any] | None = None) -> str:
    """The id of the model's run: `run_id` when the store has it, else a new run, tagged with
    the git commit and the DVC stage (and experiment, under `dvc exp run`) and given `params`.
    The run stays RUNNING (nothing is active in this process) until `model_run` reopens and
    ends it, so a killed stage leaves a run that its resumed stage can continue."""
    uri = connect()
    with _outage_as_error(uri):
        return _open_run(uri, experiment, run_name, run_id, params)


def _open_run(uri: str, experiment: str, run_name: str, run_id: str | None,
              params: Mapping[str, Any] | None = None) -> str:
    from mlflow.tracking import MlflowClient

    existing = _existing_run(run_id, run_name, uri)
    if existing:
        return existing
    client = MlflowClient(uri)
    experiment_id = _experiment_id(experiment, uri)
    run = retry_locked(lambda: client.create_run(experiment_id, tags=_new_run_tags(run_name), run_name=run_name))
    if params:
        from mlflow.entities import Param

        batch = [Param(k, str(v)) for k, v in flatten(params).items()]
        retry_locked(lambda: client.log_batch(run.info.run_id, params=batch))
    return run.info.run_id


@contextlib.contextmanager
def model_run(experiment: str, run_name: str, run_id: str | None = None) -> Iterator[str]:
    """Make the model's run active (reopening `run_id` when the store has it, else starting a
    new one); yield its id. The module's logging helpers write into the active run."""
    import mlflow

    uri = connect()
    with _outage_as_error(uri):
        run_id = _open_run(uri, experiment, run_name, run_id)
        with mlflow.start_run(run_id=run_id) as run:
            yield run.info.run_id


def attach_to_model_runs(models_dir: Path, names: Iterable[str], log_outputs: Callable[[str], None]) -> None:
    """For each model, reopen the run its training stage recorded in `run.json` and call
    `log_outputs(name)` inside it: how evaluate, visualize and report attach what they made."""
    from fer.io import read_json

    for name in names:
        run = read_json(Path(models_dir) / name / "run.json")
        with model_run(run["experiment"], name, run["run_id"]):
            log_outputs(name)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for params and metrics that MLflow wants flat."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def numeric_leaves(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of `metrics` (nested keys joined with dots), names prefixed."""
    return {f"{prefix}{k}": float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    retry_locked(lambda: mlflow.log_params(flatten(params)))


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
    """Log every numeric leaf of `metrics` into the active run."""
    import mlflow

    retry_locked(lambda: mlflow.log_metrics(numeric_leaves(metrics, prefix), step=step))


def log_artifacts(directory: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifacts(str(directory), artifact_path=artifact_path)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_torch_model(model: Any, registered_name: str, example: np.ndarray) -> str:
    """Log (and register) the model with a signature inferred from a float32 example batch of
    size >= 2, so the batch dimension stays free. Returns the model URI."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.as_tensor(example)).numpy()
    info = mlflow.pytorch.log_model(model, name="model", input_example=example,
                                    signature=infer_signature(example, output),
                                    registered_model_name=registered_name)
    return info.model_uri


class EpochLog:
    """The per-epoch metrics of one run, each epoch sent exactly once, whatever the store does.

    An epoch's record is handed over after the resume state that holds it is saved; a record
    the store does not take (server down) is kept and sent, in order, with a later epoch or at
    the end of the stage. Which epochs the run already has is read from the store, not assumed,
    so a resumed run (killed before, during or after a send) neither loses nor repeats an epoch.
    """

    def __init__(self, run_id: str, records: Iterable[Any] = ()) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri()
        self.run_id = run_id
        self.client = MlflowClient(self.uri)
        self.pending: list[Any] = list(records)
        self._verify = True  # read the store's steps before the next send
        self._warned = False
        self.last_error = ""
        self.flush()

    def __call__(self, record: Any) -> None:
        self.pending.append(record)
        self.flush()

    def _logged_steps(self) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, EPOCH_SENTINEL)}

    def _send(self, record: Any) -> None:
        from mlflow.entities import Metric

        values = dataclasses.asdict(record)
        step = values.pop("epoch")
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in numeric_leaves(values).items()]
        retry_locked(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def flush(self) -> bool:
        """Send what is pending; True when nothing is left. Never raises for an outage."""
        if not self.pending:
            return True
        try:
            check_reachable(self.uri, timeout=2.0)
            if self._verify:
                logged = self._logged_steps()
                self.pending = [r for r in self.pending if r.epoch not in logged]
                self._verify = False
            while self.pending:
                self._send(self.pending[0])
                self.pending.pop(0)
        except Exception as error:  # noqa: BLE001 - any failure to reach the store is an outage here
            self._verify = True  # a send may have landed before its answer was lost
            self.last_error = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            if not self._warned:
                log.warning("tracking store %s unreachable (%s); keeping epoch metrics to send later",
                            self.uri, self.last_error)
                self._warned = True
            return False
        if self._warned:
            log.info("tracking store %s answers again; sent the kept epoch metrics", self.uri)
            self._warned = False
        return True

    def send_all(self) -> None:
        """Send what is pending, or raise: TrackingUnavailable when the server does not answer,
        else TrackingError naming the last failure (a record is never dropped silently)."""
        if self.flush():
            return
        check_reachable(self.uri)
        if not self.flush():
            raise TrackingError(f"{len(self.pending)} epoch record(s) could not be sent to {self.uri} "
                                f"({self.last_error})")
