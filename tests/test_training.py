"""Augmentation, determinism, resume after SIGKILL, divergence handling."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fer.augment import augment_batch
from fer.data.synthetic import generate_split
from fer.models import build_model
from fer.params import AugmentParams, TrainParams, load_section
from fer.training import TrainingDiverged, fit, seed_everything
from tests.conftest import ROOT, env_with_venv, run, tiny_params, write_params


def train_params(**changes) -> TrainParams:
    base = load_section(TrainParams, "train_cnn4", ROOT / "params.yaml")
    model = dataclasses.replace(base.model, fc_hidden=16)
    return dataclasses.replace(base, model=model, **({"epochs": 2, "batch_size": 32} | changes))


def test_augmentation_keeps_shapes_and_is_seeded() -> None:
    x = torch.rand(16, 1, 48, 48)
    params = AugmentParams(flip=True, max_shift=4, max_rotation=15, max_scale=0.1, erasing_prob=1.0)
    a = augment_batch(x, params, torch.Generator().manual_seed(0))
    b = augment_batch(x, params, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1


def test_augmentation_off_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(4, 1, 48, 48)
    off = AugmentParams(flip=False, max_shift=0, max_rotation=0, max_scale=0, erasing_prob=0)
    assert torch.equal(augment_batch(x, off, torch.Generator()), x)
    flip = dataclasses.replace(off, flip=True)
    out = augment_batch(x, flip, torch.Generator().manual_seed(1))
    for original, augmented in zip(x, out):
        assert torch.allclose(augmented, original, atol=1e-5) or torch.allclose(
            augmented, torch.flip(original, dims=[2]), atol=1e-5)


def _fit(params: TrainParams, tmp_path: Path):
    seed_everything(params.seed)
    train, val = generate_split(96, 0), generate_split(32, 1)
    model = build_model(params.model)
    return fit(model, train, val, params, torch.device("cpu"), tmp_path / "ckpt.pt", "job", None)


def test_same_seed_same_history(tmp_path: Path) -> None:
    a, b = _fit(train_params(), tmp_path), _fit(train_params(), tmp_path)
    strip = lambda h: [dataclasses.replace(r, epoch_seconds=0, images_per_second=0) for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_precision_is_reproducible_and_learns(tmp_path: Path, precision: str) -> None:
    params = train_params(precision=precision, epochs=3)
    a, b = _fit(params, tmp_path), _fit(params, tmp_path)
    assert a.precision == precision
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert a.history[-1].train_loss < a.history[0].train_loss


def test_precision_auto_resolves_to_what_the_hardware_runs_natively() -> None:
    from fer.training import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")


def test_non_finite_loss_names_epoch_and_batch(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, batch \d+"):
        _fit(train_params(lr=1e30, schedule="constant", optimizer="sgd"), tmp_path)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Kill the training stage mid-run with SIGKILL, rerun it: it resumes from the last finished
    epoch in the same MLflow run and ends with the uninterrupted run's history."""
    params = tiny_params(train_cnn4={"epochs": 4})
    params["prepare"]["synthetic"].update(n_train=600)
    projects = []
    for name in ("straight", "killed"):
        project = tmp_path / name
        for item in ("stages", "fer"):
            shutil.copytree(ROOT / item, project / item, ignore=shutil.ignore_patterns("__pycache__"))
        write_params(project / "params.yaml", params)
        run(["python", "-m", "stages.prepare"], project)
        projects.append(project)
    straight, killed = projects
    run(["python", "-m", "stages.train", "--model", "cnn4"], straight)

    cmd = ["python", "-m", "stages.train", "--model", "cnn4"]
    process = subprocess.Popen(cmd, cwd=killed, env=env_with_venv(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    checkpoint = killed / "checkpoints" / "cnn4.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # now mid-way through epoch 2
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (killed / "models" / "cnn4" / "model.pt").exists()
    resumed = run(cmd, killed)
    assert "resuming cnn4 after epoch" in resumed.stdout

    def history(project: Path) -> list[list[str]]:
        rows = (project / "models" / "cnn4" / "history.csv").read_text().splitlines()
        return [row.split(",")[:6] for row in rows]  # drop the timing columns

    assert history(killed) == history(straight)
    assert not checkpoint.exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{killed / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(experiments) if r.info.run_name == "cnn4"]
    assert len(runs) == 1
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "val_acc")}
    assert steps == {1, 2, 3, 4}


def test_changed_params_do_not_resume(tmp_path: Path) -> None:
    from fer.training import fingerprint, load_resume_state

    data = tmp_path / "train.npz"
    data.write_bytes(b"data")
    job = fingerprint({"lr": 0.1}, [data])
    torch.save({"fingerprint": job, "history": []}, tmp_path / "ckpt.pt")
    assert load_resume_state(tmp_path / "ckpt.pt", job) is not None
    assert load_resume_state(tmp_path / "ckpt.pt", fingerprint({"lr": 0.2}, [data])) is None
    data.write_bytes(b"other data")
    assert load_resume_state(tmp_path / "ckpt.pt", fingerprint({"lr": 0.1}, [data])) is None
