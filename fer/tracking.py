"""MLflow for the stages: where the store is, runs and their lineage (context tags, dataset
inputs, logged models as inputs), the registry, and logging that survives a store outage.

mlflow is imported lazily, so that the library (and the `prepare` stage's start-up) stays fast
and testable without a tracking store.

The layout (docs/pipeline.md): one training run per model (`cnn4`, its params, datasets,
per-epoch and system metrics, the logged and registered model); each later stage logs into new
runs of its own (`evaluate-<model>` and `visualize-<model>`, children of the training run, and
`report`), never into the training run.

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
import hashlib
import importlib
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
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
    """The store: `MLFLOW_TRACKING_URI`, else `mlflow.db` at the project root. A relative SQLite
    path is taken from the project root too: under `dvc exp run --temp` and the queue the working
    directory is a throw-away copy, and a store there would be lost with it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{project_root() / DB_NAME}"
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():
        query = uri.partition("?")[1] + uri.partition("?")[2]
        return f"sqlite:///{project_root() / db}{query}"
    return uri


def experiment_name(configured: str) -> str:
    """MLflow's own `MLFLOW_EXPERIMENT_NAME` when set, else the name params.yaml configures."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or configured


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


def source_commit(root: Path) -> str:
    """The commit the stage's code comes from: DVC's `DVC_EXP_BASELINE_REV` under `dvc exp run`
    (queued and `--temp` experiments run a copy of that commit while the workspace at `DVC_ROOT`
    may have moved on), else the HEAD of `root`."""
    return os.environ.get("DVC_EXP_BASELINE_REV") or git_commit(root)


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


CHAMPION = "champion"  # the alias of the version the latest pipeline run produced (or found unchanged)
# Each split's role, as MLflow's dataset inputs name it (`mlflow.data.context`).
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def _new_run_tags(model: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """MLflow's context tags (user, source file, git commit, branch, repository URL) with the
    project's own: the commit the code comes from, the model, the DVC stage and experiment."""
    from mlflow.tracking.context.registry import resolve_tags

    commit = source_commit(project_root())
    tags = {"git_commit": commit, "model": model, **(extra or {})}
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp_name")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    resolved = resolve_tags(tags)
    if commit != "none":  # the context provider reads the checkout, which a queued copy has moved past
        resolved["mlflow.source.git.commit"] = commit
    return resolved


def open_run(experiment: str, run_name: str, run_id: str | None = None,
             params: Mapping[str, Any] | None = None) -> str:
    """The id of a training run: `run_id` when the store has it (set RUNNING again: a resumed
    training continues its run), else a new run with MLflow's context tags, the project's tags and
    `params`. The run stays RUNNING (nothing is active in this process) until `model_run` reopens
    and ends it, or `end_run` marks it failed, so a killed stage leaves a run its resumed stage
    can continue."""
    uri = connect()
    with _outage_as_error(uri):
        existing = _existing_run(run_id, run_name, uri)
        if existing:
            from mlflow.tracking import MlflowClient

            retry_locked(lambda: MlflowClient(uri).update_run(existing, status="RUNNING"))
            return existing
        return _create_run(uri, experiment, run_name, run_name, params)


def _create_run(uri: str, experiment: str, run_name: str, model: str, params: Mapping[str, Any] | None = None,
                tags: Mapping[str, str] | None = None) -> str:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = _experiment_id(experiment, uri)
    run = retry_locked(lambda: client.create_run(experiment_id, tags=_new_run_tags(model, tags), run_name=run_name))
    if params:
        batch = [Param(k, str(v)) for k, v in flatten(params).items()]
        retry_locked(lambda: client.log_batch(run.info.run_id, params=batch))
    return run.info.run_id


@contextlib.contextmanager
def model_run(experiment: str, run_name: str, run_id: str | None = None) -> Iterator[str]:
    """Make the training run active (reopening `run_id` when the store has it, else starting a
    new one); yield its id; it ends FINISHED. The logging helpers write into the active run."""
    import mlflow

    uri = connect()
    with _outage_as_error(uri):
        run_id = _existing_run(run_id, run_name, uri) or _create_run(uri, experiment, run_name, run_name)
        with mlflow.start_run(run_id=run_id) as run:
            yield run.info.run_id


@contextlib.contextmanager
def new_run(experiment: str, run_name: str, model: str, parent_run_id: str | None = None,
            params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """A new active run (a child of `parent_run_id` when given: the UI nests it under that run)
    with its own `params`; yield its id. It ends FINISHED, or FAILED when the block raises."""
    import mlflow

    uri = connect()
    with _outage_as_error(uri):
        extra = dict(tags or {}) | ({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})
        run_id = _create_run(uri, experiment, run_name, model, params, extra)
        with mlflow.start_run(run_id=run_id) as run:
            yield run.info.run_id


def end_run(run_id: str, status: str) -> None:
    """Mark a run FAILED or KILLED, as far as the store answers: the stage is failing already, so
    a store that does not answer only gets a warning."""
    from mlflow.tracking import MlflowClient

    try:
        retry_locked(lambda: MlflowClient(tracking_uri()).set_terminated(run_id, status))
    except Exception as error:  # noqa: BLE001 - the original failure is what the user must see
        log.warning("could not mark MLflow run %s %s (%s)", run_id, status, str(error).splitlines()[0][:200])


@contextlib.contextmanager
def system_metrics(run_id: str, resumed: bool) -> Iterator[None]:
    """Sample CPU, memory, disk, network (and GPU, where `nvidia-ml-py` is installed) into the
    run's `system/` metrics while the block runs; `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` sets
    the interval (10 s). Sampling stops, without failing the stage, when the store goes away."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines in the log
    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=tracking_uri())
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        try:  # the last, partial interval too: a training shorter than one interval gets one sample
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as error:  # noqa: BLE001 - system metrics never fail a training
            log.warning("system metrics of run %s not sent (%s)", run_id, str(error).splitlines()[0][:200])


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A model as the later stages find it: its name, and its training run and logged model in
    the store (None where the store no longer has them, e.g. after `make clean-mlflow`)."""

    name: str
    run_id: str | None
    model_id: str | None


def trained_model(models_dir: Path, name: str) -> TrainedModel:
    """The training run and logged model that `models/<name>/run.json` names, as the store has them."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fer.io import read_json

    uri = connect()
    recorded = read_json(Path(models_dir) / name / "run.json")
    run_id = _existing_run(recorded.get("run_id"), name, uri)
    model_id = recorded.get("model_id") if run_id else None
    if model_id:
        try:
            MlflowClient(uri).get_logged_model(model_id)
        except MlflowException:
            log.warning("logged model %s of %s is not in %s; its metrics are logged without it", model_id, name, uri)
            model_id = None
    return TrainedModel(name, run_id, model_id)


def stage_runs(experiment: str, stage: str, models_dir: Path, names: Iterable[str], params: Mapping[str, Any],
               log_outputs: Callable[[TrainedModel], None]) -> None:
    """For each model, one new run `<stage>-<name>`, a child of the model's training run, with the
    stage's `params` and the logged model as its input; `log_outputs(model)` logs into it. A rerun
    makes new runs: nothing is appended to the training run or to an earlier evaluation."""
    for name in names:
        model = trained_model(models_dir, name)
        with new_run(experiment, f"{stage}-{name}", name, model.run_id, params):
            log_model_inputs([model.model_id] if model.model_id else [])
            log_outputs(model)


def log_model_inputs(model_ids: Iterable[str]) -> None:
    """Name logged models as inputs of the active run (the UI links the run to their pages)."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    for model_id in model_ids:
        retry_locked(lambda: mlflow.log_input(model=LoggedModelInput(model_id)))


def active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def dataset(ref: Any, images: np.ndarray, labels: np.ndarray) -> Any:
    """An MLflow dataset of one prepared split (`ref`: a `fer.data.DataRef`): its digest is the md5
    DVC records for the split's file, its source the original data file (or the generator)."""
    import mlflow.data
    from mlflow.data.code_dataset_source import CodeDatasetSource

    source = ref.source if ref.source_kind != "synthetic" else CodeDatasetSource({"mlflow.source.name": ref.source})
    return mlflow.data.from_numpy(images, targets=labels, source=source, name=ref.name, digest=ref.digest)


def log_datasets(run_id: str, datasets: Mapping[str, tuple[Any, Any]]) -> None:
    """Log {split: (ref, mlflow dataset)} as the run's dataset inputs, each with its split's
    context and the source file's sha256 as an input tag."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [DatasetInput(data._to_mlflow_entity(),
                           [InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXTS[split]),
                            *([InputTag("source_sha256", ref.source_sha256)] if ref.source_sha256 else [])])
              for split, (ref, data) in datasets.items()]
    retry_locked(lambda: MlflowClient(tracking_uri()).log_inputs(run_id, datasets=inputs))


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


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, prefix: str = "",
                model_id: str | None = None, dataset: Any = None) -> None:
    """Log every numeric leaf of `metrics` into the active run, tied to the logged model and the
    dataset they measure when given (the model's page then lists them with their data)."""
    import mlflow

    retry_locked(lambda: mlflow.log_metrics(numeric_leaves(metrics, prefix), step=step, model_id=model_id,
                                            dataset=dataset))


def log_artifacts(directory: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifacts(str(directory), artifact_path=artifact_path)


def log_artifact(path: str | Path, artifact_path: str | None = None, name: str | None = None) -> None:
    """Log one file, under `name` when given (the file's own name otherwise)."""
    import mlflow

    if name is None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        renamed = Path(tmp) / name
        shutil.copyfile(path, renamed)
        mlflow.log_artifact(str(renamed), artifact_path=artifact_path)


def log_torch_model(model: Any, checkpoint: Path, example: np.ndarray) -> Any:
    """Log the model into the active run with a signature inferred from a float32 example batch
    of size >= 2 (so the batch dimension stays free), the checkpoint beside it (`extra_files/`:
    architecture, options and data record, so loaders rebuild the network without guessing) and
    its architecture in the model's metadata. Returns MLflow's ModelInfo."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.as_tensor(example)).numpy()
    return mlflow.pytorch.log_model(model, name="model", input_example=example,
                                    signature=infer_signature(example, output), extra_files=[str(checkpoint)],
                                    pip_requirements=pinned_requirements(TORCH_MODEL_REQUIREMENTS),
                                    metadata={"model_params": payload["model_params"],
                                              "checkpoint_sha256": file_sha256(checkpoint)})


# What loading the tensor model needs: the flavor's own packages and those `fer.models` imports.
TORCH_MODEL_REQUIREMENTS = ("mlflow", "torch", "cloudpickle", "numpy", "pyyaml")


def pinned_requirements(packages: Iterable[str]) -> list[str]:
    """`name==version` of the installed packages, without local labels such as torch's `+cpu` (so
    that pip can install them). Stated rather than inferred: MLflow's inference loads the model
    in a second Python process, about 13 s per logged model on a 2-core CPU."""
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in packages]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def find_version(name: str, tags: Mapping[str, str]) -> str | None:
    """The newest version of registered model `name` carrying all of `tags`, or None."""
    from mlflow.tracking import MlflowClient

    query = " and ".join([f"name = '{name}'", *(f"tags.{key} = '{value}'" for key, value in tags.items())])
    found = MlflowClient().search_model_versions(query, max_results=1, order_by=["version_number DESC"])
    return found[0].version if found else None


def register(name: str, tags: Mapping[str, str], log_model: Callable[[], str]) -> str:
    """The version of `name` holding the content that `tags` identify (its checkpoint's sha256,
    say): the existing one when the registry has it, else `log_model()` (which returns a model
    URI) is logged and registered with those tags. Either way the version becomes `@champion`,
    so a rerun with unchanged weights adds nothing to the registry."""
    import mlflow
    from mlflow.tracking import MlflowClient

    version = find_version(name, tags)
    if version is None:
        uri = log_model()
        version = retry_locked(lambda: mlflow.register_model(uri, name, tags=dict(tags))).version
        print(f"registered {name} version {version} (@{CHAMPION})")
    else:
        print(f"{name}: version {version} holds these weights already (@{CHAMPION}); nothing registered")
    retry_locked(lambda: MlflowClient().set_registered_model_alias(name, CHAMPION, version))
    return str(version)


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


def prune(experiment: str) -> tuple[int, int]:
    """Mark for deletion what a store no longer needs: every registered version that no alias
    names (the `@champion`s stay), and every run of `experiment` that is older than the newest
    run of its name and that no remaining version comes from, with the models it logged. Returns
    (versions, runs) deleted; `mlflow gc` then removes the marked runs and their files for good."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    kept_runs, versions = set(), 0
    for model in client.search_registered_models():
        aliased = {str(v) for v in client.get_registered_model(model.name).aliases.values()}
        for version in client.search_model_versions(f"name = '{model.name}'"):
            if str(version.version) in aliased:
                kept_runs.add(version.run_id)
            else:
                client.delete_model_version(model.name, version.version)
                versions += 1
    found = client.get_experiment_by_name(experiment)
    newest, runs = set(), 0
    for run in client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"]) if found else []:
        if run.info.run_name in newest and run.info.run_id not in kept_runs:
            for output in client.get_run(run.info.run_id).outputs.model_outputs:
                client.delete_logged_model(output.model_id)
            client.delete_run(run.info.run_id)
            runs += 1
        newest.add(run.info.run_name)
    return versions, runs
