"""Typed, validated views of the sections of `params.yaml`.

Each stage reads only its own section. Unknown or missing keys are errors rather than silent
defaults, so a typo in `params.yaml` can never train a model with settings nobody asked for.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fer import FerError

T = TypeVar("T")


class ParamsError(FerError, ValueError):
    """A params.yaml section is missing, has unknown keys, or holds an invalid value."""


def check(condition: bool, where: str, message: str) -> None:
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
            check(getattr(self, name) >= 7, f"{where}.{name}", "must be at least 7 (one per class)")
        check(0.0 <= self.label_noise < 1.0, f"{where}.label_noise", "must be in [0, 1)")


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
        check(self.format in ("auto", "kaggle", "homework", "folders"), f"{where}.format",
               f"'{self.format}' is not one of auto, kaggle, homework, folders")
        check(0.0 < self.val_fraction < 0.5, f"{where}.val_fraction", "must be in (0, 0.5)")
        self.synthetic.validate(f"{where}.synthetic")


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """A `model:` section: the registered architecture (`fer.models.ARCHITECTURES`) and its own
    options, a dataclass the architecture declares and validates."""

    arch: str
    options: Any

    def as_dict(self) -> dict[str, Any]:
        """The form saved in checkpoints and read back by `from_section`. An option at its
        declared default is left out, so that adding an option changes neither the bytes of a
        checkpoint trained without it (the shipped model reproduces bit for bit) nor how older
        checkpoints load."""
        unchanged = {f.name for f in dataclasses.fields(self.options)
                     if f.default is not dataclasses.MISSING and getattr(self.options, f.name) == f.default}
        options = {k: v for k, v in dataclasses.asdict(self.options).items() if k not in unchanged}
        return {"arch": self.arch, **options}

    @staticmethod
    def from_section(section: Any, where: str) -> ModelParams:
        """Built by the architecture registry, imported only here: the registry needs torch, and
        the stages that never read a model section (prepare) must not depend on the networks."""
        return importlib.import_module("fer.models").model_params(section, where)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    flip: bool
    max_shift: float
    max_rotation: float
    max_scale: float
    erasing_prob: float

    def validate(self, where: str) -> None:
        check(0 <= self.max_shift <= 12, f"{where}.max_shift", "must be in [0, 12] pixels")
        check(0 <= self.max_rotation <= 45, f"{where}.max_rotation", "must be in [0, 45] degrees")
        check(0 <= self.max_scale < 0.5, f"{where}.max_scale", "must be in [0, 0.5)")
        check(0 <= self.erasing_prob <= 1, f"{where}.erasing_prob", "must be in [0, 1]")


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
    ema_decay: float
    label_smoothing: float
    class_weighting: str
    consistency: float
    early_stopping_patience: int
    precision: str
    seed: int

    def validate(self, where: str) -> None:
        self.augment.validate(f"{where}.augment")
        check(self.epochs >= 1, f"{where}.epochs", "must be at least 1")
        check(self.batch_size >= 2, f"{where}.batch_size", "must be at least 2")
        check(self.optimizer in ("sgd", "adamw"), f"{where}.optimizer",
               f"'{self.optimizer}' is not one of sgd, adamw")
        check(self.schedule in ("constant", "onecycle", "cosine", "plateau"), f"{where}.schedule",
               f"'{self.schedule}' is not one of constant, onecycle, cosine, plateau")
        check(self.lr > 0, f"{where}.lr", "must be positive")
        check(0 <= self.ema_decay < 1, f"{where}.ema_decay", "must be in [0, 1) (0: no weight average)")
        check(0 <= self.label_smoothing < 1, f"{where}.label_smoothing", "must be in [0, 1)")
        check(self.class_weighting in ("none", "inverse_sqrt"), f"{where}.class_weighting",
              f"'{self.class_weighting}' is not one of none, inverse_sqrt")
        check(0 <= self.consistency <= 100, f"{where}.consistency", "must be in [0, 100] (0: one view per image)")
        check(self.precision in ("auto", "fp32", "bf16"), f"{where}.precision",
               f"'{self.precision}' is not one of auto, fp32, bf16")
        check(self.early_stopping_patience >= 0, f"{where}.early_stopping_patience",
               "must be >= 0 (0 turns early stopping off)")


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    tta_flip: bool
    tta_shift: int
    calibration_bins: int
    top_confusions: int

    def validate(self, where: str) -> None:
        check(self.batch_size >= 1, f"{where}.batch_size", "must be at least 1")
        check(0 <= self.tta_shift <= 8, f"{where}.tta_shift", "must be in [0, 8] pixels (0 turns shifted views off)")


@dataclasses.dataclass(frozen=True)
class StudyParams:
    """The networks of the study, in the order the report shows them: each has a
    `train_<name>` section and stage; evaluate, visualize and report take every one."""

    models: list[str]

    def validate(self, where: str) -> None:
        check(len(self.models) >= 1, f"{where}.models", "must name at least one model")
        check(len(set(self.models)) == len(self.models), f"{where}.models", "names a model twice")
        for name in self.models:
            check(name.isidentifier(), f"{where}.models", f"'{name}' is not a valid model name "
                  "(letters, digits and _; it names the train_<name> stage)")


@dataclasses.dataclass(frozen=True)
class AttributionParams:
    """`visualize.methods`: each registered attribution method's options (`fer.saliency`)."""

    by_method: dict[str, Any]

    @staticmethod
    def from_section(section: Any, where: str) -> AttributionParams:
        """Built by the method registry, imported only here (it needs torch and captum)."""
        return AttributionParams(importlib.import_module("fer.saliency").method_options(section, where))


@dataclasses.dataclass(frozen=True)
class SanityParams:
    images: int                   # validation images for the sanity numbers
    expensive_images: int         # expensive methods (occlusion): the first N of those
    deletion_max_fraction: float  # deletion/insertion curves over this share of the pixels
    deletion_steps: int

    def validate(self, where: str) -> None:
        for name in ("images", "expensive_images", "deletion_steps"):
            check(getattr(self, name) >= 1, f"{where}.{name}", "must be at least 1")
        check(0 < self.deletion_max_fraction <= 1, f"{where}.deletion_max_fraction", "must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class FiltersParams:
    layers: str      # "last", "all", or conv layer names
    steps: int       # activation maximisation: Adam steps, learning rate, total-variation weight,
    lr: float
    tv: float
    jitter: int      # and the random shift (pixels), rotation (degrees) and zoom of each step
    rotation: float
    scale: float
    channels: int    # the first N channels of each layer are optimised and drawn (0: all)

    def validate(self, where: str) -> None:
        check(self.steps >= 1, f"{where}.steps", "must be at least 1")
        check(self.channels >= 0, f"{where}.channels", "must be >= 0 (0: every channel)")
        check(self.lr > 0 and self.tv >= 0, f"{where}.lr/tv", "lr must be positive and tv >= 0")
        check(self.jitter >= 0 and 0 <= self.scale < 0.5, f"{where}.jitter/scale",
              "jitter must be >= 0 pixels and scale in [0, 0.5)")


@dataclasses.dataclass(frozen=True)
class VisualizeParams:
    methods: AttributionParams
    sanity: SanityParams
    filters: FiltersParams
    seed: int


def build_section(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, recursing into nested dataclasses, with exact keys."""
    check(isinstance(data, dict), where, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    missing = [n for n in names if n not in data]
    check(not unknown, where, f"unknown key(s) {unknown}; expected {names}")
    check(not missing, where, f"missing key(s) {missing}")
    values = {}
    for name in names:
        kind, value = hints[name], data[name]
        if hasattr(kind, "from_section"):  # built by a registry (architectures, attribution methods)
            values[name] = kind.from_section(value, f"{where}.{name}")
            continue
        if dataclasses.is_dataclass(kind):
            values[name] = build_section(kind, value, f"{where}.{name}")
            continue
        if typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            check(isinstance(value, list) and all(isinstance(v, item) for v in value), f"{where}.{name}",
                  f"expected a list of {item.__name__}, got {value!r}")
            values[name] = value
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        check(ok, f"{where}.{name}", f"expected {kind.__name__}, got {value!r}")
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
        check(isinstance(node, dict) and leaf in node, dotted, "is not a key of the section")
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
    check(section in data, section, "section is missing")
    return build_section(cls, data[section], section)


def section_dict(section: str, path: str | Path = "params.yaml") -> dict[str, Any]:
    """The raw mapping of one section (for logging to MLflow and hashing)."""
    return read_params(path)[section]
