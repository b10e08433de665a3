"""What the filters of a conv layer respond to: activation maximisation (in-house, as captum's
optim module is not released) and the validation images that activate each channel most.

The objective is a channel's mean activation *before* the ReLU: after it, most channels start
at zero with zero gradient and never move.
"""
from __future__ import annotations

import numpy as np
import torch

from fer import IMAGE_SIZE
from fer.augment import random_affine
from fer.models import ConvNet
from fer.params import ParamsError

KEEP_BEST_EVERY = 8


def block_index(model: ConvNet, layer: str) -> int:
    """Conv block of a layer given as `last` or a conv module name (`features.<block>.0`)."""
    names = list(model.conv_layers())
    if layer == "last":
        return len(names) - 1
    if layer not in names:
        raise ParamsError(f"params.yaml visualize.filters_layers: unknown conv layer '{layer}'; "
                          f"expected 'last', 'all' or some of {', '.join(names)}")
    return names.index(layer)


def conv_layer_names(model: ConvNet, spec: str) -> list[str]:
    """The conv layers named by a `filters_layers` value: `last`, `all`, or a comma-separated
    list of `last` and conv module names (`features.1.0`), in network order, each once."""
    names = list(model.conv_layers())
    if spec.strip() == "all":
        return names
    chosen = {names[block_index(model, item.strip())] for item in spec.split(",") if item.strip()}
    if not chosen:
        raise ParamsError(f"params.yaml visualize.filters_layers: no conv layer named in '{spec}'; "
                          f"expected 'last', 'all' or some of {', '.join(names)}")
    return [name for name in names if name in chosen]


def pre_relu(model: ConvNet, block: int, x: torch.Tensor) -> torch.Tensor:
    """Feature maps of conv block `block` just before its ReLU, for inputs in [0, 1]."""
    h = model.features[:block](model.standardize(x))
    for module in model.features[block]:
        if isinstance(module, torch.nn.ReLU):
            return h
        h = module(h)
    raise AssertionError("conv block without ReLU")


def channel_statistics(model: ConvNet, block: int, images: torch.Tensor,
                       batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per image and channel mean pre-ReLU activation (N, C), and each channel's peak pre-ReLU
    value over all images and positions (C,): a channel whose peak is <= 0 never fires (dead)."""
    model.eval()
    means, peaks = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            maps = pre_relu(model, block, images[i:i + batch_size])
            means.append(maps.mean(dim=(2, 3)))
            peaks.append(maps.amax(dim=(0, 2, 3)))
    return torch.cat(means).cpu().numpy(), torch.stack(peaks).amax(dim=0).cpu().numpy()


def receptive_field(block: int) -> tuple[int, int]:
    """(size, stride) in input pixels of a unit of conv block `block`'s pre-ReLU map: every block
    before it adds a 3x3 conv and a 2x2 pool (3, 8, 18, 38 px for blocks 0-3)."""
    size, stride = 1, 1
    for _ in range(block):
        size, stride = size + 2 * stride + stride, stride * 2
    return size + 2 * stride, stride


def strongest_unit_boxes(model: ConvNet, block: int, x: torch.Tensor, channels: np.ndarray) -> np.ndarray:
    """For each image x[k], the receptive field (top, left, bottom, right; inclusive, clipped)
    of the most active unit of channel `channels[k]`."""
    size, stride = receptive_field(block)
    with torch.no_grad():
        maps = pre_relu(model.eval(), block, x)[torch.arange(len(x)), torch.as_tensor(channels)]
    width = maps.shape[-1]
    flat = maps.reshape(len(x), -1).argmax(dim=1).numpy()
    centre_row, centre_col = (flat // width) * stride + (stride - 1) / 2, (flat % width) * stride + (stride - 1) / 2
    half = (size - 1) / 2
    boxes = np.stack([centre_row - half, centre_col - half, centre_row + half, centre_col + half], axis=1)
    return np.clip(np.round(boxes), 0, IMAGE_SIZE - 1).astype(int)


def feature_maps(model: ConvNet, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Rectified feature maps of one image (1, 1, 48, 48) at every conv layer: name -> (C, H, W)."""
    model.eval()
    names = list(model.conv_layers())
    with torch.no_grad():
        return {name: torch.relu(pre_relu(model, block, x))[0].cpu().numpy() for block, name in enumerate(names)}


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


def activation_maximisation(model: ConvNet, block: int, steps: int, lr: float, tv_weight: float, seed: int,
                            max_shift: int = 2, max_rotation: float = 5.0,
                            max_scale: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One optimised image per channel of `block`, all channels as one batch, with Adam on a
    Fourier parameterisation, a total-variation penalty and random shift/rotation/zoom each step.

    Returns (images (C, 48, 48) in [0, 1], each channel's activation on its starting noise,
    and on its final image).
    """
    model.eval()
    n_channels = model.conv_layers()[list(model.conv_layers())[block]].out_channels
    generator = torch.Generator().manual_seed(seed)
    shape = (n_channels, 1, IMAGE_SIZE, IMAGE_SIZE // 2 + 1)
    spectrum = (torch.randn(*shape, 2, generator=generator) * 0.01).requires_grad_(True)
    scale = _fourier_scale(IMAGE_SIZE)
    rows = torch.arange(n_channels)

    def render() -> torch.Tensor:
        image = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(IMAGE_SIZE, IMAGE_SIZE), norm="ortho")
        return torch.sigmoid(image)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return pre_relu(model, block, x).mean(dim=(2, 3))[rows, rows]

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
