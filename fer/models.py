"""The study's networks, registered by name, the interface the rest of the library uses to look
at a network, and the layer table that documents them.

Input convention everywhere in the project: float32 batches of shape (N, 1, 48, 48) with pixel
values in [0, 1]. Each network starts with a fixed `Standardize` layer holding the training set's
mean and standard deviation, so callers (evaluation, captum, MLflow pyfunc) never need to know
the normalisation.

Adding an architecture: a `Network` subclass with its `Options` dataclass, decorated with
`@register("<name>")` (docs/development.md#adding-an-architecture). Filters, saliency, sanity
checks, prediction and the report reach a network only through `Network`'s methods.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fer import IMAGE_SIZE, NUM_CLASSES, FerError
from fer.io import atomic_path
from fer.params import ModelParams, ParamsError, check


class Standardize(nn.Module):
    """(x - mean) / std with constants stored as buffers, saved in every checkpoint."""

    def __init__(self, mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Network(nn.Module):
    """What the library needs from a network of the study.

    - `standardize`: the input standardisation, filled from the training data by `fit`;
    - `conv_layers()`: its conv layers by module name, in execution order;
    - `activations()`: for each conv layer, the module whose *output* is that layer's rectified
      feature map (its input is the map before the nonlinearity): Grad-CAM, activation
      maximisation and the filter atlas hook these, in eval mode (a `ConvBlock` in training
      rectifies the pooled map);
    - `describe()`: one line for the report, and `params` (arch name and options) for checkpoints.

    Each architecture declares its options as a frozen dataclass `Options` with a
    `validate(where)` method: its `model:` section of params.yaml is built from it, unknown keys
    rejected. Every ReLU on the measured path must be a module used once (not `inplace`), so that
    a hook sees exactly one map per forward pass.
    """

    Options: ClassVar[type]
    arch: ClassVar[str]

    def __init__(self, params: ModelParams) -> None:
        super().__init__()
        self.params = params
        self.trained_on: dict[str, str] | None = None  # what a loaded checkpoint says it was trained on
        self.standardize = Standardize()

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        return {name: m for name, m in self.named_modules() if isinstance(m, nn.Conv2d)}

    def activations(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def last_activation(self) -> nn.Module:
        """The rectified maps of the last conv layer: Grad-CAM's layer."""
        return list(self.activations().values())[-1]

    def describe(self) -> str:
        raise NotImplementedError


ARCHITECTURES: dict[str, type[Network]] = {}


def register(name: str) -> Callable[[type[Network]], type[Network]]:
    """Class decorator: make an architecture buildable by its `arch:` name in params.yaml."""
    def add(cls: type[Network]) -> type[Network]:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture '{name}' is registered twice")
        cls.arch = name
        ARCHITECTURES[name] = cls
        return cls
    return add


def model_params(section: dict[str, Any], where: str) -> ModelParams:
    """A `model:` section (`arch` plus that architecture's options) as validated ModelParams.
    An option declared with a default may be left out (`ModelParams.as_dict` leaves it out when
    it has that value): checkpoints written before the option existed load as they were trained."""
    from fer.params import build_section

    check(isinstance(section, dict) and "arch" in section, where, "expected a mapping with an 'arch' key")
    arch = section["arch"]
    check(arch in ARCHITECTURES, f"{where}.arch", f"'{arch}' is not one of {', '.join(ARCHITECTURES)}")
    options_cls = ARCHITECTURES[arch].Options
    defaults = {f.name: f.default for f in dataclasses.fields(options_cls) if f.default is not dataclasses.MISSING}
    options = {**defaults, **{key: value for key, value in section.items() if key != "arch"}}
    return ModelParams(arch, build_section(options_cls, options, where))


class ConvBlock(nn.Sequential):
    """3x3 conv (padding 1), optional BatchNorm, ReLU, 2x2 max-pool, as one Sequential: modules
    appended after it (dropout, a residual block) keep the indices, and checkpoints the keys, of a
    plain Sequential. Append them after construction: a module built first would draw its random
    initialisation before the conv's, and the same seed would give other weights.

    In training it pools before the ReLU. The two commute exactly: ReLU is monotone, so the
    maximum of rectified values is the rectified maximum, and either way the gradient reaches only
    the window's largest input when it is positive. Values and gradients are bit for bit those of
    the written order (tests/test_models.py), and the ReLU runs on a quarter of the elements:
    a CNN4 training step on a CPU is 1.03-1.18x faster (benchmarks/train_speed.py). In eval mode, where
    Grad-CAM, the filter atlas and the layer table hook the ReLU, it runs in the written order, so
    they see the full-resolution rectified map.

    `pool_before_norm` builds conv, max-pool, BatchNorm, ReLU instead (the block of fast CIFAR-10
    training, e.g. airbench): BatchNorm and ReLU then work on a quarter of the elements, in
    training and in eval alike. Pooling does not commute with BatchNorm (its statistics, and a
    negative scale, see other values), so this is another network with the same weights'
    shapes, and its rectified maps, the ones the tools hook, have half the side."""

    def __init__(self, batch_norm: bool, c_in: int, c_out: int, pool_before_norm: bool = False) -> None:
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)
        norm, relu, pool = [nn.BatchNorm2d(c_out)] if batch_norm else [], nn.ReLU(), nn.MaxPool2d(2)
        layers = [conv, pool, *norm, relu] if pool_before_norm else [conv, *norm, relu, pool]
        super().__init__(*layers)
        self.relu_index = layers.index(relu)
        self.pool_before_norm = pool_before_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.pool_before_norm:
            return super().forward(x)
        modules, relu = list(self), self.relu_index
        for module in [*modules[:relu], modules[relu + 1], modules[relu], *modules[relu + 2:]]:
            x = module(x)
        return x


@dataclasses.dataclass(frozen=True)
class ConvNetOptions:
    batch_norm: bool
    dropout_conv: float
    dropout_fc: float
    fc_hidden: int
    pool_before_norm: bool = False  # conv, max-pool, BatchNorm, ReLU: see ConvBlock

    def validate(self, where: str) -> None:
        for name in ("dropout_conv", "dropout_fc"):
            check(0.0 <= getattr(self, name) < 1.0, f"{where}.{name}", "must be in [0, 1)")
        check(self.fc_hidden > 0, f"{where}.fc_hidden", "must be positive")


class ConvNet(Network):
    """conv blocks (3x3 conv, [BN], ReLU, 2x2 max-pool; or with `pool_before_norm` 3x3 conv,
    2x2 max-pool, [BN], ReLU) -> flatten -> FC -> ReLU -> FC(7); the conv widths are the
    subclass's `WIDTHS`."""

    Options = ConvNetOptions
    WIDTHS: ClassVar[tuple[int, ...]]

    def __init__(self, params: ModelParams) -> None:
        super().__init__(params)
        options: ConvNetOptions = params.options
        widths = (1, *self.WIDTHS)
        blocks = [ConvBlock(options.batch_norm, c_in, c_out, options.pool_before_norm)
                  for c_in, c_out in zip(widths[:-1], widths[1:])]
        if options.dropout_conv > 0:
            blocks = [block.append(nn.Dropout2d(options.dropout_conv)) for block in blocks]
        self.features = nn.Sequential(*blocks)
        side = IMAGE_SIZE // 2 ** len(self.WIDTHS)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.WIDTHS[-1] * side * side, options.fc_hidden),
            nn.ReLU(),
            nn.Dropout(options.dropout_fc),
            nn.Linear(options.fc_hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.standardize(x)))

    def activations(self) -> dict[str, nn.Module]:
        return {f"features.{i}.0": block[block.relu_index]
                for i, block in enumerate(self.features)}

    def describe(self) -> str:
        options, side = self.params.options, IMAGE_SIZE // 2 ** len(self.WIDTHS)
        norm = ", BatchNorm" if options.batch_norm else ""
        block = (f"3x3 conv, 2x2 max-pool{norm}, ReLU" if options.pool_before_norm
                 else f"3x3 conv{norm}, ReLU, 2x2 max-pool")
        return (f"{len(self.WIDTHS)} conv blocks {'-'.join(map(str, self.WIDTHS))} ({block}), "
                f"then FC {self.WIDTHS[-1] * side * side}-{options.fc_hidden}-{NUM_CLASSES}")


@register("cnn4")
class CNN4(ConvNet):
    WIDTHS = (32, 64, 128, 128)


@register("cnn3")
class CNN3(ConvNet):
    WIDTHS = (64, 128, 512)


@dataclasses.dataclass(frozen=True)
class ResNetOptions:
    width: int  # channels of the stem; the stages have 2x, 4x and 8x as many
    dropout_fc: float

    def validate(self, where: str) -> None:
        check(4 <= self.width <= 128, f"{where}.width", "must be in [4, 128]")
        check(0.0 <= self.dropout_fc < 1.0, f"{where}.dropout_fc", "must be in [0, 1)")


class Residual(nn.Module):
    """x + BN(conv(ReLU(BN(conv(x))))), then ReLU: two 3x3 convs at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), \
            nn.BatchNorm2d(channels), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), \
            nn.BatchNorm2d(channels), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(x + self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


@register("resnet9")
class ResNet9(Network):
    """The ResNet-9 of fast CIFAR-10 training (prep; layer1 + residual; layer2; layer3 + residual)
    for 48x48 faces: each conv stage pools 2x2 before the next, so the stem works at 48x48, the
    residual blocks at 12x12 and 3x3, and the head keeps the 3x3 layout of the face (flatten,
    not global pooling) for one linear layer. About twice CNN4's multiply-adds."""

    Options = ResNetOptions

    def __init__(self, params: ModelParams) -> None:
        super().__init__(params)
        w = params.options.width
        self.stem = ConvBlock(True, 1, w)
        self.layer1 = ConvBlock(True, w, 2 * w).append(Residual(2 * w))
        self.layer2 = ConvBlock(True, 2 * w, 4 * w)
        self.layer3 = ConvBlock(True, 4 * w, 8 * w).append(Residual(8 * w))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(params.options.dropout_fc),
                                        nn.Linear(8 * w * 3 * 3, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        return self.classifier(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def activations(self) -> dict[str, nn.Module]:
        found: dict[str, nn.Module] = {}
        for stage in ("stem", "layer1", "layer2", "layer3"):
            block = getattr(self, stage)
            found[f"{stage}.0"] = block[block.relu_index]
            if isinstance(block[-1], Residual):
                found[f"{stage}.4.conv1"], found[f"{stage}.4.conv2"] = block[-1].relu1, block[-1].relu2
        return found

    def describe(self) -> str:
        w = self.params.options.width
        return (f"ResNet-9: conv {w} (48x48), conv {2 * w} + residual block (12x12), conv {4 * w}, "
                f"conv {8 * w} + residual block (3x3), each conv stage 3x3 conv, BatchNorm, ReLU, 2x2 max-pool; "
                f"FC {8 * w * 9}-{NUM_CLASSES}")


def build_model(params: ModelParams) -> Network:
    """The network of `params`, its weights in channels-last layout (which `load_model` keeps):
    with it every conv output is channels-last too, whatever the layout of a one-channel input, and
    on a CPU PyTorch's max-pool runs several times faster on channels-last maps than on the default
    layout (the `visualize` and `evaluate` stage times in docs/results.md)."""
    return ARCHITECTURES[params.arch](params).to(memory_format=torch.channels_last)


def save_checkpoint(model: Network, path: Any, **extra: Any) -> None:
    """Weights plus the architecture they belong to, loadable with `weights_only=True`. Written
    through a file object, so that the same weights give the same bytes (given a path, torch
    names the archive's folder after the file, here a random temporary name): the registry
    recognises an unchanged checkpoint by its sha256."""
    payload = {"model_params": model.params.as_dict(), "state_dict": model.state_dict(), **extra}
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


def load_model(path: Any, device: torch.device | str = "cpu") -> Network:
    """Rebuild a trained model from `model.pt` without unpickling arbitrary objects: the
    checkpoint names its architecture and options (`model_params`)."""
    payload = read_checkpoint(path, "model checkpoint", ("model_params", "state_dict"), device)
    try:
        model = build_model(model_params(payload["model_params"], "model_params"))
    except ParamsError as error:
        what = str(error).removeprefix("params.yaml ")  # the checkpoint's own record, not the params file
        raise CheckpointError(f"{path}: names an architecture this project cannot build ({what})") from None
    try:
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
