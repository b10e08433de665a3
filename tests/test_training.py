"""Augmentation, determinism, resume after SIGKILL, divergence handling."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer.augment import affine_grid, augment_batch
from fer.data.synthetic import generate_split
from fer.inference import predict_logits
from fer.models import build_model
from fer.params import AugmentParams, TrainParams, load_section
from fer.runtime import CPU_BF16_PROBES, HardwareProbes, resolve_precision, seed_everything, torch_probes
from fer.training import (
    EpochRecord,
    TrainingDiverged,
    WeightAverage,
    class_weights,
    consistency_loss,
    fit,
    load_resume_state,
)
from tests.conftest import ROOT, env_with_venv, run, tiny_params, write_params


def train_params(**changes) -> TrainParams:
    base = load_section(TrainParams, "train_cnn4", ROOT / "params.yaml")
    model = dataclasses.replace(base.model, options=dataclasses.replace(base.model.options, fc_hidden=16))
    return dataclasses.replace(base, model=model, **({"epochs": 2, "batch_size": 32} | changes))


def test_augmentation_keeps_shapes_and_is_seeded() -> None:
    x = torch.rand(16, 1, 48, 48)
    params = AugmentParams(flip=True, max_shift=4, max_rotation=15, max_scale=0.1, erasing_prob=1.0)
    a = augment_batch(x, params, torch.Generator().manual_seed(0))
    b = augment_batch(x, params, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("shape", [(64, 48, 48), (5, 31, 17), (2, 1, 9)])
def test_affine_grid_is_torchs(shape: tuple[int, int, int]) -> None:
    b, h, w = shape
    theta = torch.randn(b, 2, 3, generator=torch.Generator().manual_seed(0))
    expected = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, h, w), expected, rtol=1e-6, atol=1e-6)


def test_augmentation_off_is_identity_and_flip_mirrors() -> None:
    x = torch.rand(4, 1, 48, 48)
    off = AugmentParams(flip=False, max_shift=0, max_rotation=0, max_scale=0, erasing_prob=0)
    assert torch.equal(augment_batch(x, off, torch.Generator()), x)
    flip = dataclasses.replace(off, flip=True)
    out = augment_batch(x, flip, torch.Generator().manual_seed(1))
    for original, augmented in zip(x, out):
        assert torch.allclose(augmented, original, atol=1e-5) or torch.allclose(
            augmented, torch.flip(original, dims=[2]), atol=1e-5)


def _fit(params: TrainParams, tmp_path: Path, **options):
    seed_everything(params.seed)
    train, val = generate_split(96, 0), generate_split(32, 1)
    model = build_model(params.model)
    return fit(model, train, val, params, torch.device("cpu"), tmp_path / "ckpt.pt", "job", None, **options)


def _without_times(history: list[EpochRecord]) -> list[EpochRecord]:
    return [dataclasses.replace(r, epoch_seconds=0, images_per_second=0) for r in history]


def test_same_seed_same_history(tmp_path: Path) -> None:
    a, b = _fit(train_params(), tmp_path), _fit(train_params(), tmp_path)
    assert _without_times(a.history) == _without_times(b.history)


def test_weight_average_follows_its_decay_and_copies_counters() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.5)
    expected = model[0].weight.detach().clone()
    for step in range(1, 5):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model(torch.randn(4, 2))  # BN: running statistics move and its batch counter counts
        average.update(model)
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * model[0].weight.detach()
        assert torch.allclose(average.model[0].weight, expected)
    assert average.model[1].num_batches_tracked.item() == model[1].num_batches_tracked.item() == 4
    assert not torch.equal(average.model[1].running_mean, model[1].running_mean)


def test_weight_average_is_what_is_validated_selected_and_resumed(tmp_path: Path) -> None:
    """With ema_decay the raw weights train exactly as without it; validation, selection and the
    returned weights are the average's; a run stopped after an epoch resumes to the same end."""
    raw = _fit(train_params(epochs=3), tmp_path)
    params = train_params(epochs=3, ema_decay=0.9)
    validated = []
    averaged = _fit(params, tmp_path, on_epoch=lambda record, evaluated: validated.append(
        {k: v.clone() for k, v in evaluated.state_dict().items()}))
    assert [r.train_loss for r in averaged.history] == [r.train_loss for r in raw.history]
    assert [r.val_loss for r in averaged.history] != [r.val_loss for r in raw.history]
    selected = validated[averaged.best_epoch - 1]
    assert all(torch.equal(averaged.best_state[k], selected[k]) for k in selected)
    model, val = build_model(params.model), generate_split(32, 1)
    model.load_state_dict(selected)
    predicted = predict_logits(model, val.images, torch.device("cpu")).argmax(1)
    assert (predicted == torch.as_tensor(val.labels)).float().mean().item() == averaged.best_val_acc

    class Stop(Exception):
        pass

    def stop_after_two(record: EpochRecord, _evaluated: torch.nn.Module) -> None:
        if record.epoch == 2:
            raise Stop
    with pytest.raises(Stop):
        _fit(params, tmp_path, on_epoch=stop_after_two)
    resumed = _fit(params, tmp_path, resume=load_resume_state(tmp_path / "ckpt.pt", "job"))
    assert _without_times(resumed.history) == _without_times(averaged.history)
    assert all(torch.equal(resumed.best_state[k], averaged.best_state[k]) for k in averaged.best_state)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_precision_is_reproducible_and_learns(tmp_path: Path, precision: str) -> None:
    params = train_params(precision=precision, epochs=3)
    a, b = _fit(params, tmp_path), _fit(params, tmp_path)
    assert a.precision == precision
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert a.history[-1].train_loss < a.history[0].train_loss


def test_consistency_loss_is_a_symmetric_divergence() -> None:
    a, b = torch.randn(8, 7), torch.randn(8, 7)
    assert consistency_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_loss(a, a + 5.0).item() == pytest.approx(0.0, abs=1e-6)  # same softmax
    assert consistency_loss(a, b).item() > 0
    assert consistency_loss(a, b).item() == pytest.approx(consistency_loss(b, a).item())
    p, q = torch.softmax(a, 1), torch.softmax(b, 1)
    expected = ((p - q) * (p.log() - q.log())).sum(1).mean() / 2  # (KL(p||q) + KL(q||p)) / 2
    assert consistency_loss(a, b).item() == pytest.approx(expected.item(), rel=1e-5)


def test_inverse_sqrt_class_weights_favour_rare_classes_and_keep_the_loss_scale() -> None:
    labels = np.array([0] * 400 + [1] * 25 + [3] * 100 + [6] * 100)
    assert class_weights(labels, "none") is None
    weights = class_weights(labels, "inverse_sqrt")
    assert weights[labels].mean().item() == pytest.approx(1.0)  # mean weight over the images
    assert weights[1].item() / weights[0].item() == pytest.approx(4.0)  # 16x rarer -> 4x the weight
    assert weights[2].item() == 0.0  # a class without images


def test_consistency_training_is_reproducible_and_changes_the_run(tmp_path: Path) -> None:
    params = train_params(consistency=1.0)
    a, b = _fit(params, tmp_path), _fit(params, tmp_path)
    plain = _fit(train_params(), tmp_path)
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert [r.val_loss for r in a.history] == [r.val_loss for r in b.history]
    assert [r.train_loss for r in a.history] != [r.train_loss for r in plain.history]
    assert all(torch.isfinite(torch.tensor(r.train_loss)) for r in a.history)


def _never() -> bool:
    raise AssertionError("a probe was asked although the answer did not depend on it")


def _probes(cuda: bool | None = None, **cpu: bool) -> HardwareProbes:
    """Injected answers: cuda=None means the CUDA probe must not be asked; each CPU probe given
    by name answers its value, the others are missing from this 'torch build'."""
    return HardwareProbes(_never if cuda is None else (lambda: cuda),
                          {name: (lambda value=value: value) for name, value in cpu.items()})


AVX, AMX = CPU_BF16_PROBES


@pytest.mark.parametrize("device, probes, expected", [
    ("cuda", _probes(cuda=True), "bf16"),
    ("cuda", _probes(cuda=False, **{AVX: True, AMX: True}), "fp32"),  # the CPU's answer does not matter
    ("cpu", _probes(**{AVX: True, AMX: False}), "bf16"),
    ("cpu", _probes(**{AVX: False, AMX: True}), "bf16"),
    ("cpu", _probes(**{AVX: False, AMX: False}), "fp32"),
    ("cpu", _probes(**{AMX: True}), "bf16"),  # one probe missing, the other says yes
])
def test_precision_auto_decision_table(device: str, probes: HardwareProbes, expected: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these may warn
        assert resolve_precision("auto", torch.device(device), probes) == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_explicit_precision_asks_no_probe(precision: str, device: str) -> None:
    probes = HardwareProbes(_never, {AVX: _never, AMX: _never})
    assert resolve_precision(precision, torch.device(device), probes) == precision


@pytest.mark.parametrize("cpu", [{}, {AVX: False}, {AMX: False}])
def test_precision_auto_warns_once_when_a_probe_is_missing(cpu: dict) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own once-per-place rule, fresh for this test
        for _ in range(3):
            assert resolve_precision("auto", torch.device("cpu"), _probes(**cpu)) == "fp32"
    assert len(caught) == 1 and caught[0].category is RuntimeWarning
    missing = [name for name in CPU_BF16_PROBES if name not in cpu]
    assert str(caught[0].message).startswith(
        f"precision auto: this torch build has no torch.cpu.{', torch.cpu.'.join(missing)}, so native bfloat16")


def test_real_probes_are_the_installed_torch_functions() -> None:
    probes = torch_probes()
    assert probes.cuda_bf16 is torch.cuda.is_bf16_supported
    assert all(probe is getattr(torch.cpu, name) for name, probe in probes.cpu_bf16.items())
    assert set(probes.cpu_bf16) == {name for name in CPU_BF16_PROBES if hasattr(torch.cpu, name)}


def test_non_finite_loss_names_epoch_and_batch(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, batch \d+"):
        _fit(train_params(lr=1e30, schedule="constant", optimizer="sgd"), tmp_path)


def _epochs_saved(checkpoint: Path) -> int:
    """Epochs held by the resume state (0 while there is none); it is replaced atomically, so a
    read sees either the previous state or the new one."""
    if not checkpoint.exists():
        return 0
    return len(torch.load(checkpoint, map_location="cpu", weights_only=True)["history"])


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Kill the training stage with SIGKILL once the resume state holds 2 of 4 epochs, rerun it:
    it resumes from the last saved epoch in the same MLflow run, ends with the uninterrupted
    run's history, and the run holds every epoch's metrics exactly once, in order."""
    epochs, kill_after = 4, 2
    params = tiny_params(train_cnn4={"epochs": epochs})
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
    while _epochs_saved(checkpoint) < kill_after and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    output = process.communicate()[0]
    saved = _epochs_saved(checkpoint)
    assert kill_after <= saved < epochs, output
    assert not (killed / "models" / "cnn4" / "model.pt").exists()
    resumed = run(cmd, killed)
    assert f"resuming cnn4 after epoch {saved} from" in resumed.stdout

    def history(project: Path) -> list[list[str]]:
        rows = (project / "results" / "history" / "cnn4.csv").read_text().splitlines()
        return [row.split(",")[:6] for row in rows]  # drop the timing columns

    assert history(killed) == history(straight)
    assert not checkpoint.exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{killed / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(experiments) if r.info.run_name == "cnn4"]
    assert len(runs) == 1
    per_epoch = [f.name for f in dataclasses.fields(EpochRecord) if f.name != "epoch"]
    for key in per_epoch:
        logged = sorted(client.get_metric_history(runs[0].info.run_id, key), key=lambda m: (m.timestamp, m.step))
        assert [m.step for m in logged] == list(range(1, epochs + 1)), key


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", b"PK\x03\x04 truncated zip"])
def test_unreadable_resume_state_names_the_file(tmp_path: Path, content: bytes) -> None:
    from fer import FerError
    from fer.training import load_resume_state

    path = tmp_path / "cnn4.pt"
    path.write_bytes(content)
    with pytest.raises(FerError) as info:
        load_resume_state(path, "job")
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable resume state (") and "\n" not in message
    assert message.endswith("; delete it to train from scratch")
    torch.save({"history": []}, path)  # a torch file, but not a resume state
    with pytest.raises(FerError, match="not a resume state \\(no fingerprint\\); delete it"):
        load_resume_state(path, "job")


def test_changed_params_do_not_resume(tmp_path: Path) -> None:
    from fer.models import CheckpointError
    from fer.training import ResumeState, fingerprint, load_resume_state

    data = tmp_path / "train.npz"
    data.write_bytes(b"data")
    job = fingerprint({"lr": 0.1}, [data])
    ResumeState(job, "run-1", {}, None, {}, {}, torch.get_rng_state(), torch.get_rng_state(), [], [], 0, 0.0, {}
                ).save(tmp_path / "ckpt.pt")
    assert load_resume_state(tmp_path / "ckpt.pt", job).run_id == "run-1"
    assert load_resume_state(tmp_path / "ckpt.pt", fingerprint({"lr": 0.2}, [data])) is None
    data.write_bytes(b"other data")
    assert load_resume_state(tmp_path / "ckpt.pt", fingerprint({"lr": 0.1}, [data])) is None
    torch.save({"fingerprint": job, "history": []}, tmp_path / "partial.pt")  # not all of a resume state
    with pytest.raises(CheckpointError, match="partial.pt: a resume state of another version"):
        load_resume_state(tmp_path / "partial.pt", job)


def test_a_resume_state_of_other_params_names_its_abandoned_run(tmp_path: Path) -> None:
    """The stage marks that run KILLED: it will never be continued."""
    from fer.training import abandoned_run_id

    torch.save({"fingerprint": "old-job", "run_id": "run-1", "history": []}, tmp_path / "cnn4.pt")
    assert abandoned_run_id(tmp_path / "cnn4.pt", "new-job") == "run-1"
    assert abandoned_run_id(tmp_path / "cnn4.pt", "old-job") is None  # the same job resumes it
    assert abandoned_run_id(tmp_path / "missing.pt", "new-job") is None


def test_freed_memory_is_kept_for_reuse_and_the_defaults_come_back() -> None:
    from fer.runtime import reuse_freed_memory

    try:
        assert reuse_freed_memory() is True  # glibc, as on every machine this project runs on
    finally:
        assert reuse_freed_memory(False) is True
