"""Attribution maps with captum: which pixels drive a prediction.

All maps are (N, 48, 48) arrays of non-negative importance, computed in eval mode. SmoothGrad's
noise is given as a fraction of the input range [0, 1] (captum's `stdevs` is absolute).
"""
from __future__ import annotations

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency

from fer import IMAGE_SIZE, NUM_CLASSES
from fer.models import ConvNet

METHODS = ("gradient", "smoothgrad", "integrated_gradients", "grad_cam", "occlusion")


def select_examples(labels: np.ndarray, predicted: np.ndarray, seed: int) -> np.ndarray:
    """A seeded choice, per class, of one correctly classified image and, where the class has
    any, one misclassified image."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for cls in range(NUM_CLASSES):
        for pool in ((labels == cls) & (predicted == cls), (labels == cls) & (predicted != cls)):
            rows = np.flatnonzero(pool)
            if len(rows):
                chosen.append(int(rng.choice(rows)))
    return np.asarray(chosen, dtype=np.int64)


def last_relu(model: ConvNet) -> torch.nn.Module:
    """The ReLU of the last conv block: Grad-CAM's layer (rectified feature maps, pre-pooling)."""
    return [m for m in model.features[-1] if isinstance(m, torch.nn.ReLU)][0]


def attribution_maps(model: ConvNet, x: torch.Tensor, targets: torch.Tensor, smoothgrad_noise: float,
                     smoothgrad_samples: int, ig_steps: int,
                     methods: tuple[str, ...] = METHODS) -> dict[str, np.ndarray]:
    """The maps of `methods` for inputs x (N, 1, 48, 48) in [0, 1] and their target classes."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    target = targets.tolist()
    compute = {
        "gradient": lambda: Saliency(model).attribute(x, target=target, abs=True),
        "smoothgrad": lambda: NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=smoothgrad_samples, stdevs=smoothgrad_noise,
            target=target, abs=True),
        "integrated_gradients": lambda: IntegratedGradients(model).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=ig_steps).abs(),
        "grad_cam": lambda: LayerAttribution.interpolate(
            LayerGradCam(model, last_relu(model)).attribute(x, target=target, relu_attributions=True),
            (IMAGE_SIZE, IMAGE_SIZE), interpolate_mode="bilinear").clamp(min=0),
        "occlusion": lambda: Occlusion(model).attribute(
            x, target=target, sliding_window_shapes=(1, 6, 6), strides=(1, 3, 3), baselines=0.5).clamp(min=0),
    }
    return {name: compute[name]().detach().squeeze(1).cpu().numpy() for name in methods}


def contrast_maps(model: ConvNet, x: torch.Tensor, true: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """|d(logit_true - logit_pred)/dx|: which pixels argue for the true class against the wrong one."""
    model.eval()
    weights = torch.nn.functional.one_hot(true, NUM_CLASSES).float() \
        - torch.nn.functional.one_hot(predicted, NUM_CLASSES).float()
    contrast = Saliency(lambda inputs: (model(inputs) * weights).sum(dim=1))
    return contrast.attribute(x.detach().clone().requires_grad_(True), abs=True).squeeze(1).detach().numpy()


def class_mean_grad_cam(model: ConvNet, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Mean Grad-CAM map (for the true class) of each class's images: (7, 48, 48), zeros where a
    class has no image. Each map is scaled to max 1 before averaging so no image dominates."""
    sums = np.zeros((NUM_CLASSES, IMAGE_SIZE, IMAGE_SIZE))
    counts = np.zeros(NUM_CLASSES)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], labels[start:start + batch_size]
        maps = attribution_maps(model, xb, yb, 0.0, 1, 1, methods=("grad_cam",))["grad_cam"]
        peak = maps.reshape(len(maps), -1).max(axis=1)
        maps = maps / np.where(peak > 0, peak, 1)[:, None, None]
        np.add.at(sums, yb.numpy(), maps)
        counts += np.bincount(yb.numpy(), minlength=NUM_CLASSES)
    return sums / np.maximum(counts, 1)[:, None, None]
