"""Evidence that saliency maps reflect the model, not just the image (Adebayo et al. 2018).

- Randomisation test: rank correlation between a method's maps for the trained model and for a
  re-initialised copy. Maps that survive randomisation (high correlation) explain the image,
  not the model; a model-free edge detector is the control that must score ~1.
- Deletion / insertion: removing the most salient pixels first should drop the target
  probability faster, and inserting them first raise it faster, than a random order.
- Pointing game and mass in the ground-truth masks (synthetic data): does the map point at the
  drawn expression features?
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import spearmanr

from fer.models import Network, build_model


def randomised_copy(model: Network, seed: int) -> Network:
    """Same architecture and normalisation, freshly initialised weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    fresh = build_model(model.params)
    fresh.standardize.load_state_dict(model.standardize.state_dict())
    return fresh.eval()


def rank_correlations(maps_a: np.ndarray, maps_b: np.ndarray) -> np.ndarray:
    """Spearman correlation per image; a constant map (no ranking) correlates 0 with anything,
    so randomised models that produce all-zero maps never yield NaN."""
    values = []
    for a, b in zip(maps_a.reshape(len(maps_a), -1), maps_b.reshape(len(maps_b), -1)):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            values.append(1.0 if np.array_equal(a, b) else 0.0)
        else:
            values.append(float(spearmanr(a, b).statistic))
    return np.asarray(values)


def edge_map(images: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of each image (N, H, W), edge pixels repeated: the model-free
    control of the randomisation test. One image at a time, as `ndimage.sobel` on the stack would
    also smooth across neighbouring images."""
    return np.stack([np.hypot(ndimage.sobel(image, axis=0, mode="nearest"),
                              ndimage.sobel(image, axis=1, mode="nearest"))
                     for image in images.astype(np.float64)])


@torch.no_grad()
def perturbation_curves(model: Network, x: torch.Tensor, targets: torch.Tensor, order: np.ndarray,
                        fractions: np.ndarray, baseline: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Target-class probability while the pixels in `order` (per image, most important first)
    are deleted (set to `baseline`) or inserted (into an all-`baseline` image), at each fraction.

    Returns (deletion, insertion), each (len(fractions), N).
    """
    model.eval()
    n, pixels = len(x), x[0].numel()
    flat = x.reshape(n, -1)
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(pixels)[None, :]
    rank_t = torch.as_tensor(rank)
    deletion, insertion = [], []
    for fraction in fractions:
        chosen = rank_t < int(round(fraction * pixels))
        deleted = torch.where(chosen, torch.full_like(flat, baseline), flat).reshape(x.shape)
        inserted = torch.where(chosen, flat, torch.full_like(flat, baseline)).reshape(x.shape)
        for batch, store in ((deleted, deletion), (inserted, insertion)):
            probs = model(batch).softmax(dim=1)
            store.append(probs[torch.arange(n), targets].numpy())
    return np.asarray(deletion), np.asarray(insertion)


def area_under(curve: np.ndarray, fractions: np.ndarray) -> float:
    """Mean over images of the trapezoid area, normalised by the fraction range (so in [0, 1])."""
    span = fractions[-1] - fractions[0]
    return float(np.mean(np.trapezoid(curve, fractions, axis=0) / span))


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> float:
    """Share of images whose most salient pixel lies inside the ground-truth mask."""
    flat = maps.reshape(len(maps), -1)
    top = flat.argmax(axis=1)
    return float(np.mean(masks.reshape(len(masks), -1)[np.arange(len(maps)), top] > 0))


def mass_in_mask(maps: np.ndarray, masks: np.ndarray) -> float:
    """Mean share of (non-negative) saliency mass that falls inside the mask."""
    flat = np.clip(maps.reshape(len(maps), -1), 0, None)
    total = flat.sum(axis=1)
    inside = (flat * (masks.reshape(len(masks), -1) > 0)).sum(axis=1)
    return float(np.mean(np.divide(inside, total, out=np.zeros_like(inside), where=total > 0)))


@dataclasses.dataclass(frozen=True)
class MethodSanity:
    """The sanity numbers of one method (or of the `edges` control) on `images` images, with the
    random-order deletion/insertion baseline on the same images."""
    images: int
    randomisation_spearman: float
    deletion_auc: float
    insertion_auc: float
    random_order_deletion_auc: float
    random_order_insertion_auc: float
    pointing_game: float | None = None  # with ground-truth masks only (synthetic data)
    mass_in_mask: float | None = None

    def headline(self) -> dict[str, float]:
        """The numbers compared across runs (one DVC metrics row per method)."""
        return {"randomisation_spearman": self.randomisation_spearman, "deletion_auc": self.deletion_auc,
                "insertion_auc": self.insertion_auc}


@dataclasses.dataclass(frozen=True)
class SanityReport:
    """Sanity numbers per method, the edge-detector control under `EDGES`, and, with masks, the
    share of pixels they cover and what a random map scores."""
    methods: dict[str, MethodSanity]
    mask_area_fraction: float | None
    random_map_pointing_game: float | None
    random_map_mass_in_mask: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


EDGES = "edges"


def sanity_report(model: Network, x: torch.Tensor, targets: torch.Tensor, masks: np.ndarray | None,
                  maps_fn: Callable[[Network, torch.Tensor, torch.Tensor, list[str]], dict[str, np.ndarray]],
                  methods: dict[str, int], fractions: np.ndarray, seed: int) -> SanityReport:
    """All sanity numbers for `methods` (name -> how many of the images x (N, 1, 48, 48) in [0, 1]
    it is scored on, the first ones), plus the model-free edge detector on all of them.

    `maps_fn(model, x, targets, names)` returns the maps; it is called for the trained model and for
    a randomised copy. Methods scored on the same number of images share one random-order baseline.
    """
    rng = np.random.default_rng(seed)
    randomised = randomised_copy(model, seed)
    random_maps = rng.random(x.squeeze(1).shape)
    rows: dict[str, MethodSanity] = {}
    groups: dict[int, list[str]] = {}
    for name, n in methods.items():
        groups.setdefault(min(n, len(x)), []).append(name)
    groups.setdefault(len(x), [])
    for n, names in sorted(groups.items(), reverse=True):
        xs, ts, ms = x[:n], targets[:n], None if masks is None else masks[:n]
        images = xs.squeeze(1).cpu().numpy()
        trained, control = maps_fn(model, xs, ts, names), maps_fn(randomised, xs, ts, names)
        if n == len(x):
            trained[EDGES] = control[EDGES] = edge_map(images)
        random_order = np.stack([rng.permutation(images[0].size) for _ in images])
        baseline = perturbation_curves(model, xs, ts, random_order, fractions)
        base_del, base_ins = (area_under(curve, fractions) for curve in baseline)
        for name, maps in trained.items():
            order = np.argsort(-maps.reshape(len(maps), -1), axis=1, kind="stable")
            deletion, insertion = perturbation_curves(model, xs, ts, order, fractions)
            rows[name] = MethodSanity(
                n, float(rank_correlations(maps, control[name]).mean()), area_under(deletion, fractions),
                area_under(insertion, fractions), base_del, base_ins,
                None if ms is None else pointing_game(maps, ms), None if ms is None else mass_in_mask(maps, ms))
    ordered = {name: rows[name] for name in [*methods, EDGES]}
    if masks is None:
        return SanityReport(ordered, None, None, None)
    return SanityReport(ordered, float((masks > 0).mean()), pointing_game(random_maps, masks),
                        mass_in_mask(random_maps, masks))
