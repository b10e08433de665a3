"""Attribution maps with captum: which pixels drive a prediction.

All maps are (N, 48, 48) arrays of non-negative importance, computed in eval mode. SmoothGrad's
noise is given as a fraction of the input range [0, 1] (captum's `stdevs` is absolute).
"""
from __future__ import annotations

import numpy as np
import torch
from captum.attr import (IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion,
                         Saliency)

from fer import IMAGE_SIZE, NUM_CLASSES
from fer.models import ConvNet

METHODS = ("gradient", "smoothgrad", "integrated_gradients", "grad_cam", "occlusion")


def select_examples(labels: np.ndarray, predicted: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """A seeded choice of `per_class` correctly classified images of each class (falling back
    to misclassified ones where a class has too few correct ones)."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for cls in range(NUM_CLASSES):
        correct = np.flatnonzero((labels == cls) & (predicted == cls))
        wrong = np.flatnonzero((labels == cls) & (predicted != cls))
        pool = np.concatenate([rng.permutation(correct), rng.permutation(wrong)])
        chosen.extend(pool[:per_class].tolist())
    return np.asarray(chosen, dtype=np.int64)


def last_relu(model: ConvNet) -> torch.nn.Module:
    """The ReLU of the last conv block: Grad-CAM's layer (rectified feature maps, pre-pooling)."""
    return [m for m in model.features[-1] if isinstance(m, torch.nn.ReLU)][0]


def attribution_maps(model: ConvNet, x: torch.Tensor, targets: torch.Tensor, smoothgrad_noise: float,
                     smoothgrad_samples: int, ig_steps: int) -> dict[str, np.ndarray]:
    """Every method's map for inputs x (N, 1, 48, 48) in [0, 1] and their target classes."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    targets = targets.tolist()
    maps = {
        "gradient": Saliency(model).attribute(x, target=targets, abs=True),
        "smoothgrad": NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=smoothgrad_samples, stdevs=smoothgrad_noise,
            target=targets, abs=True),
        "integrated_gradients": IntegratedGradients(model).attribute(
            x, baselines=torch.zeros_like(x), target=targets, n_steps=ig_steps).abs(),
        "grad_cam": LayerAttribution.interpolate(
            LayerGradCam(model, last_relu(model)).attribute(x, target=targets, relu_attributions=True),
            (IMAGE_SIZE, IMAGE_SIZE), interpolate_mode="bilinear").clamp(min=0),
        "occlusion": Occlusion(model).attribute(
            x, target=targets, sliding_window_shapes=(1, 6, 6), strides=(1, 3, 3), baselines=0.5).clamp(min=0),
    }
    return {name: m.detach().squeeze(1).cpu().numpy() for name, m in maps.items()}
