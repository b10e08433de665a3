"""The training loop: in-memory uint8 data, batched augmentation, per-epoch checkpoints that
make a killed run resume exactly where it stopped, and early stopping on validation accuracy."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fer import NUM_CLASSES, FerError
from fer.augment import augment_batch
from fer.data import Split
from fer.io import atomic_path
from fer.models import CheckpointError, read_checkpoint
from fer.params import TrainParams


class TrainingDiverged(FerError, RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_seconds: float
    images_per_second: float


@dataclasses.dataclass
class FitResult:
    history: list[EpochRecord]
    best_epoch: int
    best_val_acc: float
    best_state: dict[str, torch.Tensor]
    precision: str  # what `auto` resolved to: the forward/backward ran in bf16 autocast or fp32


def select_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu functions


@dataclasses.dataclass(frozen=True)
class HardwareProbes:
    """The questions `resolve_precision` asks the hardware. The CPU probes are private torch
    functions, keyed by their names in `torch.cpu`; one this torch build lacks is absent."""
    cuda_bf16: Callable[[], bool]
    cpu_bf16: dict[str, Callable[[], bool]]


def torch_probes() -> HardwareProbes:
    """The real probes of the installed torch."""
    return HardwareProbes(torch.cuda.is_bf16_supported,
                          {name: getattr(torch.cpu, name) for name in CPU_BF16_PROBES if hasattr(torch.cpu, name)})


def resolve_precision(precision: str, device: torch.device, probes: HardwareProbes | None = None) -> str:
    """`auto` -> `bf16` where bfloat16 matrix products run natively (CUDA with bf16, or a CPU with
    AVX512-BF16 or AMX: there it trains CNN4 about twice as fast as fp32, docs/results.md), else
    `fp32`: emulated bf16 would be slower than fp32. When a CPU probe is
    missing from this torch build and no other says yes, `auto` warns (once) and keeps fp32."""
    if precision != "auto":
        return precision
    probes = probes or torch_probes()
    if device.type == "cuda":
        return "bf16" if probes.cuda_bf16() else "fp32"
    if any(probe() for probe in probes.cpu_bf16.values()):
        return "bf16"
    missing = [name for name in CPU_BF16_PROBES if name not in probes.cpu_bf16]
    if missing:
        warnings.warn(f"precision auto: this torch build has no torch.cpu.{', torch.cpu.'.join(missing)}, so "
                      "native bfloat16 cannot be detected; training in fp32 (set precision: bf16 to use it)",
                      RuntimeWarning, stacklevel=2)
    return "fp32"


# glibc's mallopt parameters, and their defaults (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system (or restore
    its defaults with enabled=False); True where this is glibc. By default every tensor of more
    than a few hundred kB (a batch's activations) gets fresh pages from mmap and gives them back
    when freed, so each training step page-faults through them again: with it, system time of
    CNN4 training falls from about a quarter of the CPU time to a few percent (docs/results.md).
    The numbers computed do not change; the process keeps its peak heap."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    except OSError:
        mallopt = None
    if mallopt is None:  # not glibc (musl, macOS): nothing to tune
        return False
    mmap_max, trim = (0, 1 << 30) if enabled else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    return bool(mallopt(_M_MMAP_MAX, mmap_max)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def fingerprint(params_section: dict[str, Any], data_files: list[Path]) -> str:
    """Identity of a training job: its params and the bytes of its data. A checkpoint resumes
    only a job with the same fingerprint."""
    digest = hashlib.sha256(json.dumps(params_section, sort_keys=True).encode())
    for path in data_files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 48, 48) -> float (B, 1, 48, 48) in [0, 1], channels-last, on `device`."""
    x = images.to(device, non_blocking=True).unsqueeze(1).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last)


def make_optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                               nesterov=params.momentum > 0, weight_decay=params.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int) -> Any:
    """The LR schedule; `onecycle` steps per batch, the others per epoch."""
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.lr, epochs=params.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    if params.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)


def tta_views(x: torch.Tensor, flip: bool, shift: int) -> list[torch.Tensor]:
    """The test-time views of a batch: the image, its 4 copies shifted by `shift` pixels
    (up/down/left/right, border pixels repeated; the "crops" of a model trained with shifts),
    and the mirror of each when `flip`."""
    views = [x]
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        h, w = x.shape[-2:]
        for dy, dx in ((-shift, 0), (shift, 0), (0, -shift), (0, shift)):
            views.append(padded[..., shift + dy:shift + dy + h, shift + dx:shift + dx + w])
    if flip:
        views += [torch.flip(v, dims=[3]) for v in views]
    return views


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                   batch_size: int = 512, flip_tta: bool = False, shift_tta: int = 0) -> torch.Tensor:
    """Logits for uint8 images (N, 48, 48), in eval mode; with test-time augmentation
    (`flip_tta`, `shift_tta` > 0) the logits of all the views of `tta_views` are averaged."""
    model.eval()
    images = torch.as_tensor(images)
    outputs = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], device)
        views = tta_views(x, flip_tta, shift_tta)
        logits = torch.stack([model(v.contiguous(memory_format=torch.channels_last)) for v in views]).mean(0)
        outputs.append(logits.float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, NUM_CLASSES)


def consistency_loss(logits: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Symmetric KL divergence between the class distributions predicted for two augmented views
    of the same images, mean over the batch. Adding it to the loss (`consistency` in params.yaml)
    teaches the model to answer the same for a face framed or resampled a little differently,
    which is what a face detector's crop of a photo is (docs/predict.md)."""
    log_p, log_q = F.log_softmax(logits, dim=1), F.log_softmax(other, dim=1)
    return (F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
            + F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")) / 2


def _loss_and_accuracy(model: torch.nn.Module, split: Split, device: torch.device) -> tuple[float, float]:
    logits = predict_logits(model, split.images, device)
    labels = torch.as_tensor(split.labels)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def _check_finite(loss: torch.Tensor, epoch: int, batch: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"non-finite training loss ({loss.item()}) at epoch {epoch}, batch {batch}: "
                               "lower the learning rate or check the data")


def _save_resume_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_resume_state(path: Path, job_fingerprint: str) -> dict[str, Any] | None:
    """The last per-epoch checkpoint of the same job, or None (missing, other params or data).

    A file there that is not a resume state raises CheckpointError rather than being overwritten
    silently: it is not something this project wrote."""
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path, "resume state", ("fingerprint",))
    except CheckpointError as error:
        raise CheckpointError(f"{error}; delete it to train from scratch") from None
    return state if state["fingerprint"] == job_fingerprint else None


def abandoned_run_id(path: Path, job_fingerprint: str) -> str | None:
    """The MLflow run of a resume state left by another job (other params or data), which will
    never be continued; None when there is none."""
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path, "resume state", ("fingerprint",))
    except CheckpointError:
        return None
    return state.get("run_id") if state["fingerprint"] != job_fingerprint else None


def fit(model: torch.nn.Module, train: Split, val: Split, params: TrainParams, device: torch.device,
        checkpoint_path: Path, job_fingerprint: str, run_id: str | None,
        resume: dict[str, Any] | None = None,
        on_epoch: Callable[[EpochRecord], None] = lambda record: None) -> FitResult:
    """Train `model`; return the history and the best weights by validation accuracy.

    After every epoch a full resume state (model, optimizer, scheduler, CPU and CUDA RNG states,
    history, best weights, MLflow run id) is written atomically to `checkpoint_path`, and only
    then is the epoch's record handed to `on_epoch`. With bf16 precision
    the forward pass runs under autocast (weights, optimizer and loss stay fp32); validation and
    every later prediction run in fp32. With `params.consistency` > 0 every step sees two augmented
    views of each image and adds their `consistency_loss`, so an epoch costs twice as much; the
    recorded train loss stays the cross-entropy (comparable with the validation loss) and the
    train accuracy is the first view's.
    """
    generator = torch.Generator().manual_seed(params.seed)
    train_images = torch.as_tensor(train.images).to(device)  # uint8 on the device: ~66 MB for FER2013
    train_labels = torch.as_tensor(train.labels).to(device)
    if resume is None:
        x = train.images.astype(np.float32) / 255
        model.standardize.mean.fill_(float(x.mean()))
        model.standardize.std.fill_(float(x.std()) + 1e-6)
    model.to(device, memory_format=torch.channels_last)
    precision = resolve_precision(params.precision, device)
    steps = (len(train) + params.batch_size - 1) // params.batch_size
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params, steps)
    views = 2 if params.consistency else 1  # augmented views of each image per step
    history: list[EpochRecord] = []
    best_epoch, best_val_acc = 0, -1.0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        if device.type == "cuda" and resume.get("cuda_rng"):  # dropout draws on the device
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
        history = [EpochRecord(**row) for row in resume["history"]]
        best_epoch, best_val_acc, best_state = resume["best_epoch"], resume["best_val_acc"], resume["best_state"]

    for epoch in range(len(history) + 1, params.epochs + 1):
        if params.early_stopping_patience and epoch - best_epoch > params.early_stopping_patience:
            break
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train), generator=generator)
        loss_sum, correct = 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{params.epochs}", unit="batch", leave=False,
                   mininterval=1.0)
        for batch in bar:
            rows = order[batch * params.batch_size:(batch + 1) * params.batch_size].to(device)
            images = to_input(train_images[rows], device)
            x = augment_batch(images, params.augment, generator)
            if params.consistency:
                x = torch.cat([x, augment_batch(images, params.augment, generator)])
            y = train_labels[rows]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x).float()
            cross_entropy = F.cross_entropy(logits, y.repeat(views), label_smoothing=params.label_smoothing)
            loss = cross_entropy
            if params.consistency:
                loss = cross_entropy + params.consistency * consistency_loss(*logits.chunk(2))
            logits = logits[:len(rows)]
            _check_finite(loss, epoch, batch + 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if params.schedule == "onecycle":
                scheduler.step()
            loss_sum += cross_entropy.item() * len(rows)
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / ((batch * params.batch_size) + len(rows)):.3f}", refresh=False)
        train_seconds = time.perf_counter() - started
        val_loss, val_acc = _loss_and_accuracy(model, val, device)
        lr = optimizer.param_groups[0]["lr"]
        if params.schedule == "plateau":
            scheduler.step(val_acc)
        elif params.schedule != "onecycle":
            scheduler.step()
        record = EpochRecord(epoch, loss_sum / len(train), correct / len(train), val_loss, val_acc, lr,
                             time.perf_counter() - started, len(train) / train_seconds)
        history.append(record)
        if val_acc > best_val_acc:
            best_epoch, best_val_acc = epoch, val_acc
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        _save_resume_state(checkpoint_path, {
            "fingerprint": job_fingerprint, "run_id": run_id, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "history": [dataclasses.asdict(r) for r in history], "best_epoch": best_epoch,
            "best_val_acc": best_val_acc, "best_state": best_state,
        })
        on_epoch(record)  # after the save: a kill in between is caught up on resume, never repeated
        tqdm.write(f"epoch {epoch:3d}  train loss {record.train_loss:.4f} acc {record.train_acc:.4f}  "
                   f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {lr:.2e}  "
                   f"{record.epoch_seconds:.1f}s  {record.images_per_second:.0f} img/s")
    return FitResult(history, best_epoch, best_val_acc, best_state, precision)
