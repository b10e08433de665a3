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


def augment_batch(x: torch.Tensor, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Augment a float batch (B, C, H, W); labels are unchanged by every transform used here."""
    b, _, h, w = x.shape
    dev = x.device
    if params.flip or params.max_shift or params.max_rotation or params.max_scale:
        angle = _uniform(b, math.radians(params.max_rotation), generator, dev)
        scale = 1 + _uniform(b, params.max_scale, generator, dev)
        shift_x = _uniform(b, params.max_shift * 2 / w, generator, dev)
        shift_y = _uniform(b, params.max_shift * 2 / h, generator, dev)
        flip = torch.ones(b, device=dev)
        if params.flip:
            flip = torch.where(_rand(b, generator=generator, device=dev) < 0.5, -flip, flip)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, shift_x], 1),
                             torch.stack([sin * flip, cos, shift_y], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
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
