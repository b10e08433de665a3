"""Attribution maps with captum: which pixels drive a prediction, one registered method each.

All maps are (N, 48, 48) arrays of non-negative importance, computed in eval mode. A method is a
function decorated with `@register_method(name, Options, expensive=...)`; its options are a typed
sub-section `visualize.methods.<name>` of params.yaml. The visualize stage draws and sanity-checks
every registered method, `predict --explain` offers each, and the report and the per-method
metrics list them all, so a method cannot be drawn without being checked
(docs/development.md#adding-an-attribution-method).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency

from fer import IMAGE_SIZE, NUM_CLASSES
from fer.models import Network
from fer.params import build_section, check

OCCLUSION_BATCH = 16  # window positions per forward pass: the same maps, in fewer, larger batches
MapFunction = Callable[[Network, torch.Tensor, list[int], Any], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered attribution method. `compute(model, x, targets, options)` returns maps shaped
    like x or (N, 48, 48); `expensive` methods get their sanity numbers on the first
    `visualize.sanity.expensive_images` of the sanity sample only."""
    name: str
    compute: MapFunction
    options: type
    expensive: bool
    summary: str


METHODS: dict[str, Method] = {}


def register_method(name: str, options: type | None = None,
                    expensive: bool = False) -> Callable[[MapFunction], MapFunction]:
    """Function decorator: add an attribution method (its docstring's first line is its summary)."""
    def add(compute: MapFunction) -> MapFunction:
        if name in METHODS:
            raise ValueError(f"attribution method '{name}' is registered twice")
        summary = (compute.__doc__ or name).strip().splitlines()[0]
        METHODS[name] = Method(name, compute, options or NoOptions, expensive, summary)
        return compute
    return add


@dataclasses.dataclass(frozen=True)
class NoOptions:
    def validate(self, where: str) -> None:
        pass


def method_options(section: Any, where: str) -> dict[str, Any]:
    """`visualize.methods`: one sub-section per registered method (no more, no fewer), each
    built as that method's options."""
    check(isinstance(section, dict), where, f"expected a mapping, got {type(section).__name__}")
    unknown, missing = sorted(set(section) - set(METHODS)), [m for m in METHODS if m not in section]
    check(not unknown, where, f"unknown method(s) {unknown}; registered: {list(METHODS)}")
    check(not missing, where, f"missing method(s) {missing} (every registered method is drawn and checked)")
    return {name: build_section(METHODS[name].options, section[name] or {}, f"{where}.{name}") for name in METHODS}


@dataclasses.dataclass(frozen=True)
class SmoothGradOptions:
    noise: float = 0.15  # std of the noise, as a fraction of the [0, 1] input range
    samples: int = 8

    def validate(self, where: str) -> None:
        check(self.noise > 0, f"{where}.noise", "must be positive")
        check(self.samples >= 1, f"{where}.samples", "must be at least 1")


@dataclasses.dataclass(frozen=True)
class IntegratedGradientsOptions:
    steps: int = 8

    def validate(self, where: str) -> None:
        check(self.steps >= 1, f"{where}.steps", "must be at least 1")


@dataclasses.dataclass(frozen=True)
class OcclusionOptions:
    window: int = 6  # side of the grey square slid over the face, pixels
    stride: int = 3

    def validate(self, where: str) -> None:
        check(1 <= self.window <= IMAGE_SIZE, f"{where}.window", f"must be in [1, {IMAGE_SIZE}]")
        check(1 <= self.stride <= self.window, f"{where}.stride", "must be in [1, window]")


@register_method("gradient")
def gradient(model: Network, x: torch.Tensor, target: list[int], options: NoOptions) -> torch.Tensor:
    """|d logit / d pixel| (vanilla gradient)."""
    return Saliency(model).attribute(x, target=target, abs=True)


@register_method("smoothgrad", SmoothGradOptions)
def smoothgrad(model: Network, x: torch.Tensor, target: list[int], options: SmoothGradOptions) -> torch.Tensor:
    """The gradient averaged over noisy copies of the image (SmoothGrad)."""
    return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=options.samples,
                                                  stdevs=options.noise, target=target, abs=True)


@register_method("integrated_gradients", IntegratedGradientsOptions)
def integrated_gradients(model: Network, x: torch.Tensor, target: list[int],
                         options: IntegratedGradientsOptions) -> torch.Tensor:
    """|Integrated gradients| from a black image."""
    return IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                n_steps=options.steps).abs()


@register_method("grad_cam")
def grad_cam(model: Network, x: torch.Tensor, target: list[int], options: NoOptions) -> torch.Tensor:
    """Grad-CAM on the last conv layer's rectified maps, upsampled bilinearly."""
    cam = LayerGradCam(model, model.last_activation()).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam, (IMAGE_SIZE, IMAGE_SIZE), interpolate_mode="bilinear").clamp(min=0)


@register_method("occlusion", OcclusionOptions, expensive=True)
def occlusion(model: Network, x: torch.Tensor, target: list[int], options: OcclusionOptions) -> torch.Tensor:
    """Drop of the logit when a grey square hides each region (one forward pass per position)."""
    return Occlusion(model).attribute(x, target=target, sliding_window_shapes=(1, options.window, options.window),
                                      strides=(1, options.stride, options.stride), baselines=0.5,
                                      perturbations_per_eval=OCCLUSION_BATCH).clamp(min=0)


def default_options(methods: Iterable[str]) -> dict[str, Any]:
    """Each method's options at their dataclass defaults (for `predict --explain`, which has no
    params.yaml; the study's values are under `visualize.methods`)."""
    return {name: METHODS[name].options() for name in methods}


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


def attribution_maps(model: Network, x: torch.Tensor, targets: torch.Tensor,
                     options: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The maps of the methods named in `options` (method -> its options) for inputs x
    (N, 1, 48, 48) in [0, 1] and their target classes."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    target = targets.tolist()
    return {name: METHODS[name].compute(model, x, target, opts).detach().reshape(len(x), IMAGE_SIZE, IMAGE_SIZE)
            .cpu().numpy() for name, opts in options.items()}


def contrast_maps(model: Network, x: torch.Tensor, true: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """|d(logit_true - logit_pred)/dx|: which pixels argue for the true class against the wrong one."""
    model.eval()
    weights = torch.nn.functional.one_hot(true, NUM_CLASSES).float() \
        - torch.nn.functional.one_hot(predicted, NUM_CLASSES).float()
    contrast = Saliency(lambda inputs: (model(inputs) * weights).sum(dim=1))
    return contrast.attribute(x.detach().clone().requires_grad_(True), abs=True).squeeze(1).detach().numpy()


def class_mean_grad_cam(model: Network, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Mean Grad-CAM map (for the true class) of each class's images: (7, 48, 48), zeros where a
    class has no image. Each map is scaled to max 1 before averaging so no image dominates."""
    sums = np.zeros((NUM_CLASSES, IMAGE_SIZE, IMAGE_SIZE))
    counts = np.zeros(NUM_CLASSES)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], labels[start:start + batch_size]
        maps = attribution_maps(model, xb, yb, default_options(["grad_cam"]))["grad_cam"]
        peak = maps.reshape(len(maps), -1).max(axis=1)
        maps = maps / np.where(peak > 0, peak, 1)[:, None, None]
        np.add.at(sums, yb.numpy(), maps)
        counts += np.bincount(yb.numpy(), minlength=NUM_CLASSES)
    return sums / np.maximum(counts, 1)[:, None, None]
