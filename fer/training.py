"""The training loop: in-memory uint8 data, batched augmentation, a schedule object, per-epoch
resume states that make a killed run resume exactly where it stopped, and early stopping on
validation accuracy. Device, precision and seeds are in `fer.runtime`; inputs and logits in
`fer.inference`."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
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
from fer.inference import predict_logits, to_input
from fer.io import atomic_path
from fer.models import CheckpointError, read_checkpoint
from fer.params import TrainParams
from fer.runtime import resolve_precision


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


def fingerprint(params_section: dict[str, Any], data_files: list[Path]) -> str:
    """Identity of a training job: its params and the bytes of its data. A checkpoint resumes
    only a job with the same fingerprint."""
    digest = hashlib.sha256(json.dumps(params_section, sort_keys=True).encode())
    for path in data_files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def make_optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                               nesterov=params.momentum > 0, weight_decay=params.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int) -> Any:
    """The torch LR scheduler of `params.schedule` (names are checked when params are loaded)."""
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.lr, epochs=params.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    if params.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics, updated after
    every optimizer step (`ema_decay` in params.yaml). The average of the last few hundred steps
    smooths out SGD's noise while training goes on with the raw weights: on FER2013 it is ahead
    of them by one to two epochs of a one-cycle schedule (docs/results.md). The decay ramps up as
    (1 + t) / (10 + t) over the first steps, so the random initialisation is soon forgotten.
    Integer buffers (batch-norm's batch counter) are copied, not averaged."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            if average.is_floating_point():
                average.lerp_(current[name], weight)
            else:
                average.copy_(current[name])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


@dataclasses.dataclass
class Schedule:
    """The learning-rate schedule, stepped where its kind wants: `onecycle` after every batch,
    `plateau` on the validation accuracy after each epoch, the others after each epoch."""
    kind: str
    scheduler: Any

    def after_batch(self) -> None:
        if self.kind == "onecycle":
            self.scheduler.step()

    def after_epoch(self, val_acc: float) -> None:
        if self.kind == "plateau":
            self.scheduler.step(val_acc)
        elif self.kind != "onecycle":
            self.scheduler.step()


def class_weights(labels: np.ndarray, weighting: str) -> torch.Tensor | None:
    """Per-class weights of the cross-entropy: None for `none`; for `inverse_sqrt`, each class
    weighted by 1/sqrt(its share of the training images), scaled so that the mean weight over the
    training images is 1 (the loss keeps its size, so the learning rate keeps its meaning). On
    FER2013 disgust (1.5% of the images) then weighs about 3x a typical class: rare expressions are
    learned without the full 1/frequency weights that trade too much accuracy on the common ones.
    The recorded `train_loss` is then the weighted cross-entropy."""
    if weighting == "none":
        return None
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    weights = np.where(counts > 0, 1 / np.sqrt(np.maximum(counts, 1)), 0.0)
    weights *= len(labels) / float((weights * counts).sum())
    return torch.tensor(weights, dtype=torch.float32)


def consistency_loss(logits: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Symmetric KL divergence between the class distributions predicted for two augmented views
    of the same images, mean over the batch. Adding it to the loss (`consistency` in params.yaml)
    teaches the model to answer the same for a face framed or resampled a little differently,
    which is what a face detector's crop of a photo is (docs/predict.md)."""
    log_p, log_q = F.log_softmax(logits, dim=1), F.log_softmax(other, dim=1)
    return (F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
            + F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")) / 2


def _check_finite(loss: torch.Tensor, epoch: int, batch: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"non-finite training loss ({loss.item()}) at epoch {epoch}, batch {batch}: "
                               "lower the learning rate or check the data")


@dataclasses.dataclass
class ResumeState:
    """Everything a killed training needs to continue exactly where it stopped, saved after
    every epoch: weights, their average (when `ema_decay` > 0), optimizer, scheduler, RNG states,
    history and best weights so far, the job it belongs to and its MLflow run."""
    fingerprint: str
    run_id: str | None
    model: dict[str, torch.Tensor]
    average: dict[str, Any] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: torch.Tensor
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    best_val_acc: float
    best_state: dict[str, torch.Tensor]

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:  # a plain dict of its fields (asdict would deep-copy every tensor)
            torch.save({field.name: getattr(self, field.name) for field in dataclasses.fields(self)}, tmp)

    def records(self) -> list[EpochRecord]:
        return [EpochRecord(**row) for row in self.history]


def load_resume_state(path: Path, job_fingerprint: str) -> ResumeState | None:
    """The last per-epoch state of the same job, or None (missing, other params or data).

    A file there that is not a resume state raises CheckpointError rather than being overwritten
    silently: it is not something this project wrote."""
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path, "resume state", ("fingerprint",))
    except CheckpointError as error:
        raise CheckpointError(f"{error}; delete it to train from scratch") from None
    if state["fingerprint"] != job_fingerprint:
        return None
    try:
        return ResumeState(**state)
    except TypeError:
        raise CheckpointError(f"{path}: a resume state of another version of this project; delete it to "
                              "train from scratch") from None


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


def _loss_and_accuracy(model: torch.nn.Module, split: Split, device: torch.device) -> tuple[float, float]:
    logits = predict_logits(model, split.images, device)
    labels = torch.as_tensor(split.labels)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def _train_epoch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, params: TrainParams,
                 optimizer: torch.optim.Optimizer, schedule: Schedule, generator: torch.Generator,
                 precision: str, epoch: int, weights: torch.Tensor | None = None,
                 average: WeightAverage | None = None) -> tuple[float, int]:
    """One pass over the training images in a seeded order, updating `average` after every step;
    returns (summed cross-entropy, correct).
    With `params.consistency` > 0 every step sees two augmented views of each image and adds their
    `consistency_loss`; the cross-entropy and the accuracy reported are the first view's."""
    device = images.device
    model.train()
    order = torch.randperm(len(images), generator=generator)
    steps = (len(images) + params.batch_size - 1) // params.batch_size
    views = 2 if params.consistency else 1
    loss_sum, correct = 0.0, 0
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{params.epochs}", unit="batch", leave=False, mininterval=1.0)
    for batch in bar:
        rows = order[batch * params.batch_size:(batch + 1) * params.batch_size].to(device)
        faces = to_input(images[rows], device)
        x = augment_batch(faces, params.augment, generator)
        if params.consistency:
            x = torch.cat([x, augment_batch(faces, params.augment, generator)])
        y = labels[rows]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x).float()
        cross_entropy = F.cross_entropy(logits, y.repeat(views), weight=weights,
                                        label_smoothing=params.label_smoothing)
        loss = cross_entropy
        if params.consistency:
            loss = cross_entropy + params.consistency * consistency_loss(*logits.chunk(2))
        _check_finite(loss, epoch, batch + 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(model)
        schedule.after_batch()
        loss_sum += cross_entropy.item() * len(rows)
        correct += (logits[:len(rows)].argmax(1) == y).sum().item()
        bar.set_postfix(loss=f"{loss_sum / ((batch * params.batch_size) + len(rows)):.3f}", refresh=False)
    return loss_sum, correct


def fit(model: torch.nn.Module, train: Split, val: Split, params: TrainParams, device: torch.device,
        checkpoint_path: Path, job_fingerprint: str, run_id: str | None,
        resume: ResumeState | None = None,
        on_epoch: Callable[[EpochRecord, torch.nn.Module], None] = lambda record, evaluated: None) -> FitResult:
    """Train `model`; return the history and the best weights by validation accuracy.

    With `params.ema_decay` > 0 the weights validated, selected and returned are the
    `WeightAverage`'s; the training loss and accuracy are those of the raw weights being trained.
    After every epoch a `ResumeState` is written atomically to `checkpoint_path`, and only then
    are the epoch's record and the model validated handed to `on_epoch`. With bf16 precision the
    forward pass runs under autocast (weights, optimizer and loss stay fp32); validation and every
    later prediction run in fp32. With `params.consistency` > 0 an epoch costs twice as much (two
    views per image).
    """
    generator = torch.Generator().manual_seed(params.seed)
    weights = class_weights(train.labels, params.class_weighting)
    weights = None if weights is None else weights.to(device)
    train_images = torch.as_tensor(train.images).to(device)  # uint8 on the device: ~66 MB for FER2013
    train_labels = torch.as_tensor(train.labels).to(device)
    if resume is None:
        x = train.images.astype(np.float32) / 255
        model.standardize.mean.fill_(float(x.mean()))
        model.standardize.std.fill_(float(x.std()) + 1e-6)
    model.to(device, memory_format=torch.channels_last)
    average = WeightAverage(model, params.ema_decay) if params.ema_decay else None
    evaluated = model if average is None else average.model
    precision = resolve_precision(params.precision, device)
    optimizer = make_optimizer(model, params)
    schedule = Schedule(params.schedule, make_scheduler(optimizer, params, -(-len(train) // params.batch_size)))
    history: list[EpochRecord] = []
    best_epoch, best_val_acc = 0, -1.0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume is not None:
        model.load_state_dict(resume.model)
        if average is not None:
            average.load_state_dict(resume.average)
        optimizer.load_state_dict(resume.optimizer)
        schedule.scheduler.load_state_dict(resume.scheduler)
        generator.set_state(resume.generator)
        torch.set_rng_state(resume.torch_rng)
        if device.type == "cuda" and resume.cuda_rng:  # dropout draws on the device
            torch.cuda.set_rng_state_all(resume.cuda_rng)
        history, best_epoch, best_val_acc, best_state = (resume.records(), resume.best_epoch, resume.best_val_acc,
                                                         resume.best_state)

    for epoch in range(len(history) + 1, params.epochs + 1):
        if params.early_stopping_patience and epoch - best_epoch > params.early_stopping_patience:
            break
        started = time.perf_counter()
        loss_sum, correct = _train_epoch(model, train_images, train_labels, params, optimizer, schedule, generator,
                                         precision, epoch, weights, average)
        train_seconds = time.perf_counter() - started
        val_loss, val_acc = _loss_and_accuracy(evaluated, val, device)
        lr = optimizer.param_groups[0]["lr"]
        schedule.after_epoch(val_acc)
        record = EpochRecord(epoch, loss_sum / len(train), correct / len(train), val_loss, val_acc, lr,
                             time.perf_counter() - started, len(train) / train_seconds)
        history.append(record)
        if val_acc > best_val_acc:
            best_epoch, best_val_acc = epoch, val_acc
            best_state = {k: v.detach().cpu().clone() for k, v in evaluated.state_dict().items()}
        state = ResumeState(job_fingerprint, run_id, model.state_dict(),
                            None if average is None else average.state_dict(), optimizer.state_dict(),
                            schedule.scheduler.state_dict(), generator.get_state(), torch.get_rng_state(),
                            torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                            [dataclasses.asdict(r) for r in history], best_epoch, best_val_acc, best_state)
        state.save(checkpoint_path)
        on_epoch(record, evaluated)  # after the save: a kill in between is caught up on resume, never repeated
        tqdm.write(f"epoch {epoch:3d}  train loss {record.train_loss:.4f} acc {record.train_acc:.4f}  "
                   f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {lr:.2e}  "
                   f"{record.epoch_seconds:.1f}s  {record.images_per_second:.0f} img/s")
    return FitResult(history, best_epoch, best_val_acc, best_state, precision)
