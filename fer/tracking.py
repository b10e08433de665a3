"""Everything MLflow: the store location, runs, and logging helpers. The only module that
imports mlflow, so the rest of the library stays testable without a tracking store.

The store is the SQLite file `mlflow.db` at the DVC root (`DVC_ROOT`, set by DVC for every
stage, including `dvc exp run --temp` copies), with artifacts in `mlartifacts/` beside it;
`MLFLOW_TRACKING_URI` overrides the store.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DB_NAME}"


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "none"


def _experiment_id(name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (project_root() / ARTIFACTS_DIR).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def model_run(experiment: str, run_name: str, run_id: str | None = None) -> Iterator[str]:
    """Start (or, with `run_id`, reopen) the MLflow run of one model; yield its id.

    A new run is tagged with the git commit and the DVC stage (and experiment, under
    `dvc exp run`).
    """
    mlflow.set_tracking_uri(tracking_uri())
    kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {
        "experiment_id": _experiment_id(experiment), "run_name": run_name}
    with mlflow.start_run(**kwargs) as run:
        if not run_id:  # a reopened run keeps the tags of the stage that created it
            tags = {"git_commit": git_commit(project_root()), "model": run_name}
            for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp_name")):
                if os.environ.get(env):
                    tags[tag] = os.environ[env]
            mlflow.set_tags(tags)
        yield run.info.run_id


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


def log_params(params: Mapping[str, Any]) -> None:
    mlflow.log_params(flatten(params))


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
    """Log every numeric leaf of `metrics` (nested keys joined with dots), names prefixed."""
    numeric = {f"{prefix}{k}": float(v) for k, v in flatten(metrics).items()
               if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
    mlflow.log_metrics(numeric, step=step)


def log_epoch(record: Any) -> None:
    values = dataclasses.asdict(record)
    epoch = values.pop("epoch")
    log_metrics(values, step=epoch)


def log_artifacts(directory: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifacts(str(directory), artifact_path=artifact_path)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
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
