"""Procedural 48x48 grayscale faces with FER2013's 7 classes and pixel-level ground truth.

Every face is drawn in its own canonical coordinates (u, v in about [-1, 1], v pointing down);
a per-image affine map (shift, rotation, scale) places it in the image, so identity, pose and
expression are independent factors. An expression is a point in a small geometry space (brow
height and tilt, eye openness, mouth curvature/openness/width, nose wrinkle) drawn from
overlapping per-class distributions, so the confusions the model makes are the plausible FER ones
(disgust~angry, sad~neutral, fear~surprise). The union of the expression-bearing features is
returned as a mask, against which saliency maps can be scored.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from fer import IMAGE_SIZE, NUM_CLASSES
from fer.data import Split

# FER2013 Training class frequencies (angry .. neutral), for a FER-like imbalance.
FER_CLASS_FREQUENCIES = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965]) / 28709

# Per-class mean geometry. Columns: brow_raise, brow_tilt (+ = inner ends down, a frown),
# eye_open, mouth_curve (+ = smile), mouth_open, mouth_width, wrinkle.
GEOMETRY_NAMES = ("brow_raise", "brow_tilt", "eye_open", "mouth_curve", "mouth_open",
                  "mouth_width", "wrinkle")
CLASS_GEOMETRY = np.array([
    [-0.07, 0.09, 0.65, -0.05, 0.02, 0.28, 0.45],   # angry
    [-0.05, 0.06, 0.60, -0.10, 0.05, 0.30, 0.95],   # disgust
    [0.09, -0.07, 1.30, -0.05, 0.10, 0.28, 0.00],   # fear
    [0.00, 0.00, 0.80, 0.15, 0.07, 0.38, 0.10],     # happy
    [0.02, -0.08, 0.75, -0.09, 0.00, 0.28, 0.00],   # sad
    [0.12, -0.01, 1.45, 0.00, 0.18, 0.22, 0.00],    # surprise
    [0.00, 0.00, 1.00, 0.00, 0.00, 0.30, 0.00],     # neutral
])
# Within-class spread of each geometry factor: the overlap that makes the task non-trivial.
GEOMETRY_SPREAD = np.array([0.035, 0.04, 0.17, 0.045, 0.04, 0.035, 0.25])


def _segment_distance(u, v, x0, y0, x1, y1):
    """Distance from points (u, v) to the segments (x0, y0)-(x1, y1), broadcast per image."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(u - (x0 + t * dx), v - (y0 + t * dy))


def _ink(distance, width):
    """Anti-aliased stroke: 1 on the stroke, fading to 0 over about one pixel."""
    return np.clip(1.0 - (distance - width) / 0.045, 0.0, 1.0)


# A Gaussian of this sigma cut at radius 1 has the binomial weights (1/4, 1/2, 1/4):
# exp(-1 / (2 sigma^2)) = 1/2.
BLUR_SIGMA = 1 / np.sqrt(2 * np.log(2))


def _blur(images: np.ndarray) -> np.ndarray:
    """3x3 binomial blur of each image (N, H, W), edge pixels repeated: a radius-1 Gaussian.

    scipy accumulates in float64; against a float32 hand-written version the blurred values differ
    by at most one float32 ulp (1.2e-7), which moved 14 of the 8.5 million uint8 pixels of the
    default synthetic set (seed 0) by one grey level."""
    return ndimage.gaussian_filter(images, sigma=(0, BLUR_SIGMA, BLUR_SIGMA), radius=(0, 1, 1), mode="nearest")


def _draw(geometry: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one batch: geometry (n, 7) -> images float32 (n, 48, 48) in [0, 1], masks bool."""
    n = len(geometry)
    col = lambda values: np.asarray(values, dtype=np.float32).reshape(n, 1, 1)  # noqa: E731
    brow_raise, brow_tilt, eye_open, curve, mouth_open, mouth_w, wrinkle = (
        col(geometry[:, i]) for i in range(geometry.shape[1]))

    # Pose: canonical coordinates of each image pixel.
    axis = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    angle = col(np.radians(rng.uniform(-12, 12, n)))
    scale = col(rng.uniform(0.88, 1.05, n))
    tx, ty = col(rng.uniform(-0.08, 0.08, n)), col(rng.uniform(-0.06, 0.08, n))
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((x - tx) * cos + (y - ty) * sin) / scale
    v = (-(x - tx) * sin + (y - ty) * cos) / scale

    # Identity: head shape, skin, hair, eye spacing; background with an illumination gradient.
    half_w, half_h = col(rng.uniform(0.62, 0.76, n)), col(rng.uniform(0.84, 0.95, n))
    skin = col(rng.uniform(0.45, 0.85, n))
    background = col(rng.uniform(0.05, 0.7, n)) + col(rng.uniform(-0.15, 0.15, n)) * x
    head = np.clip((1 - np.hypot(u / half_w, v / half_h)) / 0.05, 0, 1)
    image = background * (1 - head) + skin * head
    hair_line = col(rng.uniform(-0.75, -0.5, n))
    hair = head * np.clip((hair_line - v + 0.08 * np.abs(u)) / 0.05, 0, 1)
    image = image * (1 - hair) + col(rng.uniform(0.05, 0.35, n)) * hair
    eye_x, eye_y = col(rng.uniform(0.28, 0.38, n)), col(rng.uniform(-0.22, -0.1, n))

    # Expression features (each a stroke intensity in [0, 1]).
    eye_rx, eye_ry = 0.13, 0.075 * np.clip(eye_open, 0.25, 2.0)
    eyes = sum(np.clip((1 - np.hypot((u - side * eye_x) / eye_rx, (v - eye_y) / eye_ry)) / 0.25, 0, 1)
               for side in (-1, 1))
    brow_y = eye_y - 0.2 - brow_raise
    brows = sum(_ink(_segment_distance(u, v, side * 0.1, brow_y + brow_tilt,
                                       side * (eye_x + 0.17), brow_y - brow_tilt), 0.03)
                for side in (-1, 1))
    mouth_y = col(rng.uniform(0.42, 0.52, n))
    across = np.clip(u / mouth_w, -1, 1)
    inside = np.abs(u) <= mouth_w
    centre_line = mouth_y + curve * (1 - across ** 2) - curve / 2
    lips = _ink(np.abs(v - centre_line), 0.025) * inside
    opening = np.clip(mouth_open, 0, None) * np.sqrt(1 - across ** 2)
    gap = np.clip((opening - np.abs(v - centre_line)) / 0.04, 0, 1) * inside
    mouth = np.maximum(lips, gap)
    nose = _ink(_segment_distance(u, v, 0.0, eye_y + 0.12, 0.0, mouth_y - 0.2), 0.012) * 0.4
    wrinkles = np.clip(wrinkle, 0, 1.5) * sum(
        _ink(_segment_distance(u, v, side * 0.04, eye_y + 0.1 + dy, side * 0.16, eye_y + 0.06 + dy), 0.012)
        for side in (-1, 1) for dy in (0.0, 0.07))
    expression = np.clip(eyes + brows + mouth + np.clip(wrinkles, 0, 1), 0, 1)
    darkness = np.clip(expression + nose, 0, 1) * head * (1 - hair)
    image = image * (1 - 0.75 * darkness)

    # Nuisance: blur, sensor noise, contrast.
    image = _blur(image)
    image = image + rng.normal(0, 1, image.shape).astype(np.float32) * col(rng.uniform(0.01, 0.05, n))
    masks = (expression * head) > 0.3
    return np.clip(image, 0, 1), masks


def generate_split(n: int, seed: int, label_noise: float = 0.0, batch: int = 1024) -> Split:
    """`n` synthetic faces with FER-like class imbalance, deterministic in `seed`.

    With `label_noise` > 0, that fraction of labels is replaced by a uniformly drawn other class
    (the masks and geometry keep the true expression, as with FER2013's annotation noise).
    """
    rng = np.random.default_rng(seed)
    labels = rng.choice(NUM_CLASSES, size=n, p=FER_CLASS_FREQUENCIES)
    # Every class at least once, so no split ever lacks a class entirely.
    labels[:NUM_CLASSES] = np.arange(NUM_CLASSES)
    rng.shuffle(labels)
    geometry = CLASS_GEOMETRY[labels] + rng.normal(size=(n, len(GEOMETRY_NAMES))) * GEOMETRY_SPREAD
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for start in range(0, n, batch):
        drawn, drawn_masks = _draw(geometry[start:start + batch], rng)
        images[start:start + batch] = np.round(drawn * 255).astype(np.uint8)
        masks[start:start + batch] = drawn_masks
    noisy = rng.random(n) < label_noise
    shifted = (labels + rng.integers(1, NUM_CLASSES, size=n)) % NUM_CLASSES
    observed = np.where(noisy, shifted, labels).astype(np.int64)
    return Split(images, observed, np.arange(n, dtype=np.int64), masks)


def generate_dataset(n_train: int, n_val: int, n_test: int, seed: int,
                     label_noise: float = 0.0) -> dict[str, Split]:
    """Independent train/val/test draws; label noise only on train (evaluation stays honest)."""
    return {
        "train": generate_split(n_train, seed, label_noise),
        "val": generate_split(n_val, seed + 1),
        "test": generate_split(n_test, seed + 2),
    }
