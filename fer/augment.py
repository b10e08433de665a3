"""Batched data augmentation on tensors: one affine warp (shift, rotation, scale, flip) and
random erasing for the whole batch at once, with no per-sample Python loop.

Random numbers are always drawn from a CPU generator and then moved to the batch's device: a
CPU generator cannot draw on CUDA, and drawing on the CPU keeps the augmentation stream the same
on every device."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fer.params import AugmentParams


def _rand(*shape: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(*shape, generator=generator).to(device, non_blocking=True)


def _uniform(n: int, bound: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (_rand(n, generator=generator, device=device) * 2 - 1) * bound


def _base_coordinates(n: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel centres on [-1, 1], as `F.affine_grid` places them (align_corners=False)."""
    return torch.linspace(-1, 1, n, dtype=like.dtype, device=like.device) * (n - 1) / n


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`F.affine_grid(theta, (B, C, h, w), align_corners=False)` for a batch of 2x3 matrices,
    (B, h, w, 2), computed as x * column 0 + y * column 1 + column 2 by broadcasting. Torch's
    version copies a base grid for every image and runs a batched matrix product with an inner
    size of 3, which costs more than the warp itself. This is the same arithmetic in the same
    order in about half the time (`benchmarks/train_speed.py`); it gave torch's numbers to the
    last bit where compared, and `tests/test_training.py` holds it to them."""
    columns = theta.transpose(1, 2)[:, None, None]  # (B, 1, 1, 3, 2)
    x = _base_coordinates(w, theta).view(1, 1, w, 1)
    y = _base_coordinates(h, theta).view(1, h, 1, 1)
    return (x * columns[..., 0, :] + y * columns[..., 1, :]) + columns[..., 2, :]


def random_affine(x: torch.Tensor, generator: torch.Generator, max_shift: float = 0.0, max_rotation: float = 0.0,
                  max_scale: float = 0.0, flip: bool = False, padding_mode: str = "border") -> torch.Tensor:
    """One random warp per image of a float batch (B, C, H, W), all in one `grid_sample`: shift up
    to `max_shift` pixels, rotation up to `max_rotation` degrees, zoom by up to `max_scale`, and a
    mirror with probability 1/2 when `flip`."""
    b, _, h, w = x.shape
    dev = x.device
    angle = _uniform(b, math.radians(max_rotation), generator, dev)
    scale = 1 + _uniform(b, max_scale, generator, dev)
    shift_x = _uniform(b, max_shift * 2 / w, generator, dev)
    shift_y = _uniform(b, max_shift * 2 / h, generator, dev)
    mirror = torch.ones(b, device=dev)
    if flip:
        mirror = torch.where(_rand(b, generator=generator, device=dev) < 0.5, -mirror, mirror)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift_x], 1),
                         torch.stack([sin * mirror, cos, shift_y], 1)], 1)
    grid = affine_grid(theta, h, w)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def augment_batch(x: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Augment a float batch (B, C, H, W); labels are unchanged by every transform used here."""
    if params.flip or params.max_shift or params.max_rotation or params.max_scale:
        x = random_affine(x, generator, params.max_shift, params.max_rotation, params.max_scale, params.flip)
    if params.erasing_prob > 0:
        x = random_erasing(x, params.erasing_prob, generator)
    return x


def random_erasing(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Replace one random rectangle (10-40% of each side) per chosen image with uniform noise."""
    b, _, h, w = x.shape
    dev = x.device
    rand = lambda *shape: _rand(*shape, generator=generator, device=dev)  # noqa: E731
    chosen = rand(b) < probability
    eh = (h * (0.1 + 0.3 * rand(b))).long()
    ew = (w * (0.1 + 0.3 * rand(b))).long()
    top = (rand(b) * (h - eh)).long()
    left = (rand(b) * (w - ew)).long()
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
              & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1))
              & chosen.view(b, 1, 1))
    return torch.where(inside.unsqueeze(1), rand(*x.shape), x)
