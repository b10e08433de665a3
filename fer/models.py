"""The study's CNNs, defined once and built by name, plus the layer table that documents them.

Input convention everywhere in the project: float32 batches of shape (N, 1, 48, 48) with pixel
values in [0, 1]. Each model starts with a fixed `Standardize` layer holding the training set's
mean and standard deviation, so callers (evaluation, captum, MLflow pyfunc) never need to know
the normalisation.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer import ARCHITECTURES, IMAGE_SIZE, NUM_CLASSES, FerError
from fer.io import atomic_path
from fer.params import ModelParams


class Standardize(nn.Module):
    """(x - mean) / std with constants stored as buffers, saved in every checkpoint."""

    def __init__(self, mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_block(c_in: int, c_out: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers += [nn.ReLU(), nn.MaxPool2d(2)]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """conv blocks (3x3 conv, [BN], ReLU, 2x2 max-pool) -> flatten -> FC -> ReLU -> FC(7).

    `trained_on` is what a loaded checkpoint says the weights were trained on
    (`fer.data.training_data`), None for a new model or a checkpoint that does not say."""

    def __init__(self, params: ModelParams) -> None:
        super().__init__()
        self.params = params
        self.trained_on: dict[str, str] | None = None
        channels = ARCHITECTURES[params.arch]
        self.standardize = Standardize()
        widths = (1, *channels)
        self.features = nn.Sequential(*(
            _conv_block(c_in, c_out, params.batch_norm, params.dropout_conv)
            for c_in, c_out in zip(widths[:-1], widths[1:])
        ))
        side = IMAGE_SIZE // 2 ** len(channels)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[-1] * side * side, params.fc_hidden),
            nn.ReLU(),
            nn.Dropout(params.dropout_fc),
            nn.Linear(params.fc_hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.standardize(x)))

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """The conv layers by their module name (`features.0.0`, ...), first to last."""
        return {name: m for name, m in self.named_modules() if isinstance(m, nn.Conv2d)}


def build_model(params: ModelParams) -> ConvNet:
    return ConvNet(params)


def save_checkpoint(model: ConvNet, params: ModelParams, path: Any, **extra: Any) -> None:
    """Weights plus the architecture they belong to, loadable with `weights_only=True`. Written
    through a file object, so that the same weights give the same bytes (given a path, torch
    names the archive's folder after the file, here a random temporary name): the registry
    recognises an unchanged checkpoint by its sha256."""
    payload = {"model_params": dataclasses.asdict(params), "state_dict": model.state_dict(), **extra}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


class CheckpointError(FerError, ValueError):
    """A checkpoint file is missing, corrupt, or not one this project wrote."""


def _first_sentence(error: BaseException) -> str:
    """The start of an error's message: torch's loading errors run to a dozen lines."""
    text = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(error).__name__}: {text[:120]}" if text else type(error).__name__


def read_checkpoint(path: Any, what: str, keys: tuple[str, ...],
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """The dict saved in a torch checkpoint with at least `keys`, loaded without unpickling
    arbitrary objects, or CheckpointError: one line naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        with warnings.catch_warnings():  # a foreign pickle also draws a multi-line protocol warning
            warnings.filterwarnings("ignore", category=UserWarning, module="torch")
            payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch.load fails with RuntimeError, EOFError, UnpicklingError, KeyError, ...
        raise CheckpointError(f"{path}: not a readable {what} ({_first_sentence(error)})") from None
    missing = [key for key in keys if key not in payload] if isinstance(payload, dict) else list(keys)
    if missing:
        raise CheckpointError(f"{path}: not a {what} (no {', '.join(missing)})")
    return payload


def load_model(path: Any, device: torch.device | str = "cpu") -> ConvNet:
    """Rebuild a trained model from `model.pt` without unpickling arbitrary objects."""
    payload = read_checkpoint(path, "model checkpoint", ("model_params", "state_dict"), device)
    try:
        model = build_model(ModelParams(**payload["model_params"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: weights do not fit the architecture it names "
                              f"({_first_sentence(error)})") from None
    model.trained_on = payload.get("data")
    return model.to(device).eval()


@dataclasses.dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int


def layer_table(model: nn.Module) -> list[LayerRow]:
    """One row per leaf module, in execution order, from a real forward pass of one image."""
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue

        def record(mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
            n_params = sum(p.numel() for p in mod.parameters(recurse=False))
            rows.append(LayerRow(name, type(mod).__name__, tuple(out.shape[1:]), n_params))

        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return rows


def layer_table_markdown(rows: list[LayerRow], title: str) -> str:
    total = sum(r.parameters for r in rows)
    lines = [f"### {title}", "", "| layer | type | output shape | parameters |", "|---|---|---|---:|"]
    lines += [f"| {r.name} | {r.kind} | {' x '.join(map(str, r.output_shape))} | {r.parameters:,} |"
              for r in rows]
    lines += [f"| **total** | | | **{total:,}** |", ""]
    return "\n".join(lines)
