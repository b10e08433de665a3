"""Typed, validated views of the sections of `params.yaml`.

Each stage reads only its own section. Unknown or missing keys are errors rather than silent
defaults, so a typo in `params.yaml` can never train a model with settings nobody asked for.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fer import ARCHITECTURES, FerError

T = TypeVar("T")


class ParamsError(FerError, ValueError):
    """A params.yaml section is missing, has unknown keys, or holds an invalid value."""


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"params.yaml {where}: {message}")


@dataclasses.dataclass(frozen=True)
class TrackingParams:
    """Where results are recorded, not what a model is: no stage lists these keys in dvc.yaml and
    no training fingerprint holds them, so renaming the experiment or the registered models
    retrains nothing. `MLFLOW_EXPERIMENT_NAME` overrides `experiment`."""

    experiment: str
    registered_model_prefix: str

    def registered_model(self, model: str) -> str:
        """The registry name of a model's tensor model (its photo model adds `-photo`)."""
        return f"{self.registered_model_prefix}{model}"


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
    n_train: int
    n_val: int
    n_test: int
    label_noise: float
    seed: int

    def validate(self, where: str) -> None:
        for name in ("n_train", "n_val", "n_test"):
            _check(getattr(self, name) >= 7, f"{where}.{name}", "must be at least 7 (one per class)")
        _check(0.0 <= self.label_noise < 1.0, f"{where}.label_noise", "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    source: str
    format: str
    val_fraction: float
    split_seed: int
    drop_blank: bool
    drop_cross_split_duplicates: bool
    synthetic: SyntheticParams

    def validate(self, where: str) -> None:
        _check(self.format in ("auto", "kaggle", "homework", "folders"), f"{where}.format",
               f"'{self.format}' is not one of auto, kaggle, homework, folders")
        _check(0.0 < self.val_fraction < 0.5, f"{where}.val_fraction", "must be in (0, 0.5)")
        self.synthetic.validate(f"{where}.synthetic")


@dataclasses.dataclass(frozen=True)
class ModelParams:
    arch: str
    batch_norm: bool
    dropout_conv: float
    dropout_fc: float
    fc_hidden: int

    def validate(self, where: str) -> None:
        _check(self.arch in ARCHITECTURES, f"{where}.arch",
               f"'{self.arch}' is not one of {', '.join(ARCHITECTURES)}")
        for name in ("dropout_conv", "dropout_fc"):
            _check(0.0 <= getattr(self, name) < 1.0, f"{where}.{name}", "must be in [0, 1)")
        _check(self.fc_hidden > 0, f"{where}.fc_hidden", "must be positive")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    flip: bool
    max_shift: float
    max_rotation: float
    max_scale: float
    erasing_prob: float

    def validate(self, where: str) -> None:
        _check(0 <= self.max_shift <= 12, f"{where}.max_shift", "must be in [0, 12] pixels")
        _check(0 <= self.max_rotation <= 45, f"{where}.max_rotation", "must be in [0, 45] degrees")
        _check(0 <= self.max_scale < 0.5, f"{where}.max_scale", "must be in [0, 0.5)")
        _check(0 <= self.erasing_prob <= 1, f"{where}.erasing_prob", "must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    model: ModelParams
    augment: AugmentParams
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    label_smoothing: float
    consistency: float
    early_stopping_patience: int
    precision: str
    seed: int

    def validate(self, where: str) -> None:
        self.model.validate(f"{where}.model")
        self.augment.validate(f"{where}.augment")
        _check(self.epochs >= 1, f"{where}.epochs", "must be at least 1")
        _check(self.batch_size >= 2, f"{where}.batch_size", "must be at least 2")
        _check(self.optimizer in ("sgd", "adamw"), f"{where}.optimizer",
               f"'{self.optimizer}' is not one of sgd, adamw")
        _check(self.schedule in ("constant", "onecycle", "cosine", "plateau"), f"{where}.schedule",
               f"'{self.schedule}' is not one of constant, onecycle, cosine, plateau")
        _check(self.lr > 0, f"{where}.lr", "must be positive")
        _check(0 <= self.label_smoothing < 1, f"{where}.label_smoothing", "must be in [0, 1)")
        _check(0 <= self.consistency <= 100, f"{where}.consistency", "must be in [0, 100] (0: one view per image)")
        _check(self.precision in ("auto", "fp32", "bf16"), f"{where}.precision",
               f"'{self.precision}' is not one of auto, fp32, bf16")
        _check(self.early_stopping_patience >= 0, f"{where}.early_stopping_patience",
               "must be >= 0 (0 turns early stopping off)")


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    tta_flip: bool
    tta_shift: int
    calibration_bins: int
    top_confusions: int

    def validate(self, where: str) -> None:
        _check(self.batch_size >= 1, f"{where}.batch_size", "must be at least 1")
        _check(0 <= self.tta_shift <= 8, f"{where}.tta_shift", "must be in [0, 8] pixels (0 turns shifted views off)")


@dataclasses.dataclass(frozen=True)
class VisualizeParams:
    saliency_model: str
    filters_model: str
    filters_layers: str
    smoothgrad_noise: float
    smoothgrad_samples: int
    ig_steps: int
    sanity_images: int
    occlusion_images: int
    deletion_max_fraction: float
    deletion_steps: int
    act_max_steps: int
    act_max_lr: float
    act_max_tv: float
    act_max_jitter: int
    act_max_rotation: float
    act_max_scale: float
    seed: int

    def validate(self, where: str) -> None:
        for name in ("smoothgrad_samples", "ig_steps", "sanity_images", "occlusion_images", "deletion_steps",
                     "act_max_steps"):
            _check(getattr(self, name) >= 1, f"{where}.{name}", "must be at least 1")
        _check(0 < self.deletion_max_fraction <= 1, f"{where}.deletion_max_fraction", "must be in (0, 1]")
        _check(self.act_max_jitter >= 0 and 0 <= self.act_max_scale < 0.5, f"{where}.act_max_jitter/act_max_scale",
               "jitter must be >= 0 pixels and scale in [0, 0.5)")


def build_section(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, recursing into nested dataclasses, with exact keys."""
    _check(isinstance(data, dict), where, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    missing = [n for n in names if n not in data]
    _check(not unknown, where, f"unknown key(s) {unknown}; expected {names}")
    _check(not missing, where, f"missing key(s) {missing}")
    values = {}
    for name in names:
        kind, value = hints[name], data[name]
        if dataclasses.is_dataclass(kind):
            values[name] = build_section(kind, value, f"{where}.{name}")
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        _check(ok, f"{where}.{name}", f"expected {kind.__name__}, got {value!r}")
        values[name] = value
    built = cls(**values)
    validate = getattr(built, "validate", None)
    if validate is not None:
        validate(where)
    return built


def with_overrides(section: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw params section with dotted keys (`augment.max_shift`) replaced, as
    `dvc exp run -S` would; a key the section does not have is an error, not a new key."""
    section = copy.deepcopy(section)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = section
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        _check(isinstance(node, dict) and leaf in node, dotted, "is not a key of the section")
        node[leaf] = value
    return section


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    return data


def load_section(cls: type[T], section: str, path: str | Path = "params.yaml") -> T:
    """Load and validate one section of params.yaml as the dataclass `cls`."""
    data = read_params(path)
    _check(section in data, section, "section is missing")
    return build_section(cls, data[section], section)


def section_dict(section: str, path: str | Path = "params.yaml") -> dict[str, Any]:
    """The raw mapping of one section (for logging to MLflow and hashing)."""
    return read_params(path)[section]
