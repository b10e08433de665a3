"""What the filters of a conv layer respond to: activation maximisation (in-house, as captum's
optim module is not released) and the validation images that activate each channel most.

The objective is a channel's mean activation *before* the nonlinearity: after a ReLU, most
channels start at zero with zero gradient and never move. Networks are reached only through
`fer.models.Network` (conv layers by name, the activation module after each).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fer import IMAGE_SIZE
from fer.augment import random_affine
from fer.models import Network
from fer.params import ParamsError

KEEP_BEST_EVERY = 8


def layer_name(model: Network, layer: str) -> str:
    """A conv layer given as `last` or by its module name, checked against the network."""
    names = list(model.conv_layers())
    if layer == "last":
        return names[-1]
    if layer not in names:
        raise ParamsError(f"params.yaml visualize.filters.layers: unknown conv layer '{layer}' of "
                          f"{model.arch}; expected 'last', 'all' or some of {', '.join(names)}")
    return layer


def conv_layer_names(model: Network, spec: str) -> list[str]:
    """The conv layers named by a `filters.layers` value: `last`, `all`, or a comma-separated
    list of `last` and conv module names (`features.1.0`), in network order, each once."""
    names = list(model.conv_layers())
    if spec.strip() == "all":
        return names
    chosen = {layer_name(model, item.strip()) for item in spec.split(",") if item.strip()}
    if not chosen:
        raise ParamsError(f"params.yaml visualize.filters.layers: no conv layer named in '{spec}'; "
                          f"expected 'last', 'all' or some of {', '.join(names)}")
    return [name for name in names if name in chosen]


class _Reached(Exception):
    """Raised by a hook to end a forward pass once the wanted map is computed."""


def pre_activation(model: Network, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The maps of conv layer `layer` just before its nonlinearity (the input of its activation
    module, `Network.activations`), for inputs in [0, 1]. The forward pass stops there, so
    the layers after it cost nothing; gradients flow back to `x`."""
    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0])
        raise _Reached

    handle = model.activations()[layer].register_forward_pre_hook(capture)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    return captured[0]


@dataclasses.dataclass(frozen=True)
class ChannelStatistics:
    """What the validation images do to each channel of a layer, from its pre-activation maps:
    the mean per image (N, C), the peak over all images and positions (C,; a channel whose peak
    is <= 0 never fires: dead), and the (row, col) of the strongest unit per image (N, C, 2)."""
    means: np.ndarray
    peaks: np.ndarray
    strongest: np.ndarray


def channel_statistics(model: Network, layer: str, images: torch.Tensor, batch_size: int = 256) -> ChannelStatistics:
    model.eval()
    means, peaks, strongest = [], [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            maps = pre_activation(model, layer, images[i:i + batch_size])
            means.append(maps.mean(dim=(2, 3)))
            peaks.append(maps.amax(dim=(0, 2, 3)))
            flat = maps.flatten(2).argmax(dim=2)
            strongest.append(torch.stack([flat // maps.shape[-1], flat % maps.shape[-1]], dim=-1))
    return ChannelStatistics(torch.cat(means).cpu().numpy(), torch.stack(peaks).amax(dim=0).cpu().numpy(),
                             torch.cat(strongest).cpu().numpy())


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Where a unit (row, col) of a conv layer's map looks in the input: a `size`-pixel square
    centred at (`start` + row * `stride`, `start` + col * `stride`)."""
    size: int
    stride: int
    start: float


_SPATIAL = (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d)


def receptive_fields(model: Network) -> dict[str, ReceptiveField]:
    """The receptive field of a unit of every conv layer's rectified map (the output of its
    `Network.activations` module: the conv's own map, or the pooled one in a pool-first block),
    from the kernels, strides and paddings of the convolutions and poolings in the order one
    forward pass runs them (along the main path: a residual shortcut adds no kernel)."""
    layer_of = {id(module): name for name, module in model.activations().items()}
    order: list[torch.nn.Module] = []
    hooks = [module.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for module in model.modules() if isinstance(module, _SPATIAL) or id(module) in layer_of]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    fields, size, stride, start = {}, 1, 1, 0.0
    for module in order:
        if id(module) in layer_of:
            fields[layer_of[id(module)]] = ReceptiveField(size, stride, start)
            continue
        kernel, step, padding = (_pair(getattr(module, key)) for key in ("kernel_size", "stride", "padding"))
        size += (kernel - 1) * stride
        start += ((kernel - 1) / 2 - padding) * stride
        stride *= step
    return fields


def _pair(value: int | tuple[int, ...]) -> int:
    """One side of a square kernel, stride or padding (the study's networks use square ones)."""
    return value if isinstance(value, int) else value[0]


def unit_boxes(field: ReceptiveField, units: np.ndarray) -> np.ndarray:
    """The receptive fields (top, left, bottom, right; inclusive, clipped to the image) of units
    given as (..., 2) (row, col) positions in a layer's map."""
    centre = field.start + units * field.stride
    half = (field.size - 1) / 2
    boxes = np.concatenate([centre - half, centre + half], axis=-1)
    return np.clip(np.round(boxes), 0, IMAGE_SIZE - 1).astype(int)


def feature_maps(model: Network, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Rectified feature maps of one image (1, 1, 48, 48) at every conv layer: name -> (C, H, W)."""
    maps: dict[str, np.ndarray] = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: maps.__setitem__(name, out[0].cpu().numpy()))
             for name, module in model.activations().items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    return maps


def _fourier_scale(size: int) -> torch.Tensor:
    """1/frequency weights: a decorrelated image parameterisation that favours smooth images."""
    fy = torch.fft.fftfreq(size).view(-1, 1)
    fx = torch.fft.rfftfreq(size).view(1, -1)
    return 1.0 / torch.sqrt(fx ** 2 + fy ** 2).clamp(min=1.0 / size)


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _jitter(x: torch.Tensor, generator: torch.Generator, max_shift: int, max_rotation: float,
            max_scale: float) -> torch.Tensor:
    """A random whole-pixel shift of the batch, then a random rotation and zoom per image
    (reflected borders), so that the optimised pattern has to work in any pose rather than
    exploit one exact pixel grid.

    The bilinear resampling blurs a little; on its own that lowered the final activation of some
    channels, which is why `activation_maximisation` keeps, per channel, the best un-jittered image.
    """
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if max_rotation or max_scale:
        x = random_affine(x, generator, max_rotation=max_rotation, max_scale=max_scale, padding_mode="reflection")
    return x


def activation_maximisation(model: Network, layer: str, steps: int, lr: float, tv_weight: float, seed: int,
                            max_shift: int = 2, max_rotation: float = 5.0, max_scale: float = 0.05,
                            channels: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One optimised image per channel of conv layer `layer` (the first `channels`, 0: all), all
    as one batch, with Adam on a Fourier parameterisation, a total-variation penalty and random
    shift/rotation/zoom each step.

    Returns (images (C, 48, 48) in [0, 1], each channel's activation on its starting noise,
    and on its final image).
    """
    model.eval()
    n_channels = model.conv_layers()[layer].out_channels
    n_channels = min(n_channels, channels) if channels else n_channels
    generator = torch.Generator().manual_seed(seed)
    shape = (n_channels, 1, IMAGE_SIZE, IMAGE_SIZE // 2 + 1)
    spectrum = (torch.randn(*shape, 2, generator=generator) * 0.01).requires_grad_(True)
    scale = _fourier_scale(IMAGE_SIZE)
    rows = torch.arange(n_channels)

    def render() -> torch.Tensor:
        image = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(IMAGE_SIZE, IMAGE_SIZE), norm="ortho")
        return torch.sigmoid(image)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return pre_activation(model, layer, x).mean(dim=(2, 3))[rows, rows]

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    try:
        with torch.no_grad():
            best_image = render()
            start = objective(best_image)
        best = start.clone()
        optimiser = torch.optim.Adam([spectrum], lr=lr)
        for step in range(1, steps + 1):
            image = render()
            jittered = _jitter(image, generator, max_shift, max_rotation, max_scale)
            loss = -objective(jittered).mean() + tv_weight * _total_variation(image)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % KEEP_BEST_EVERY == 0 or step == steps:
                # Jitter makes the optimised objective an average over poses; keep, per channel,
                # the image that scores best un-jittered, which is what the figure shows.
                with torch.no_grad():
                    candidate = render()
                    value = objective(candidate)
                    better = value > best
                    best = torch.where(better, value, best)
                    best_image[better] = candidate[better]
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    final_image, final = best_image, best
    return final_image.squeeze(1).numpy(), start.numpy(), final.numpy()
