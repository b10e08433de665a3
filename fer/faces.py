"""Faces in photos: OpenCV Haar-cascade detection, the square crop to FER2013's framing, and
synthetic test photos made by pasting known faces onto a background.

FER2013 images are tight crops (forehead and chin cut off), and the cascades were trained on
whole faces: they miss some FER-style faces. The crop is a square around the
detected box, scaled by `DetectorParams.margin` and shifted by `DetectorParams.shift`, chosen by
the round-trip measurement (`benchmarks/face_roundtrip.py`) so that the crop covers the square
the face occupied, and the model predicts on it what it predicts on the original face.
The cascade files ship inside the opencv-python-headless 4.x wheel (`cv2.data.haarcascades`):
nothing is downloaded at run time.
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import cv2
import numpy as np

from fer import IMAGE_SIZE, FerError

CASCADES: dict[str, str] = {
    "default": "haarcascade_frontalface_default.xml",
    "alt": "haarcascade_frontalface_alt.xml",
    "alt2": "haarcascade_frontalface_alt2.xml",
    "alt_tree": "haarcascade_frontalface_alt_tree.xml",
    "profile": "haarcascade_profileface.xml",
}

# Boxes are int arrays (K, 4) of x, y, width, height in image pixels; detected boxes are square.
NO_BOXES = np.zeros((0, 4), dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class DetectorParams:
    """How faces are found, cropped and predicted. Detection was chosen on hand-annotated real
    photos, for precision as well as recall (`benchmarks/real_photos.py`, docs/predict.md): on
    real scenes a low `min_neighbors` and a second cascade fire on wood grain, railings and
    necklaces; the framing on FER2013 faces pasted into synthetic photos
    (`benchmarks/face_roundtrip.py`).

    cascades: the Haar cascades run (names of CASCADES); boxes of one face are merged, so a face
        any of them finds counts.
    scale_factor, min_neighbors, min_size: OpenCV's detectMultiScale settings (min_size in
        pixels of the copy that detection runs on).
    max_side: detection runs on a copy whose longer side is at most this many pixels (boxes are
        mapped back; crops come from the original): the cascade's cost grows with the pixel
        count, while a face that fills a few percent of a photo is still dozens of pixels wide.
        0: detect at full resolution.
    equalize: histogram-equalise the grayscale image before detection.
    merge_iou: boxes overlapping more than this are one face (their mean is kept).
    margin: side of the crop / side of the detected box: the cascade's box of a pasted FER face is
        the pasted square give or take a few pixels, a little small on average; this margin
        brings the crop closest to the pasted square.
    shift: downward shift of the crop centre, as a fraction of the detected box side.
    tta_flip, tta_shift: the prediction averages the logits of the crop, its copies shifted by
        `tta_shift` pixels and their mirrors (`fer.inference.tta_views`; 0 and False: the crop
        alone). A detected box misses the FER2013 framing by a few pixels, and the averaged views
        change their answer less for that (docs/predict.md).
    """

    cascades: tuple[str, ...] = ("default",)
    scale_factor: float = 1.2
    min_neighbors: int = 5
    min_size: int = 24
    max_side: int = 640
    equalize: bool = False
    merge_iou: float = 0.3
    margin: float = 1.05
    shift: float = 0.0
    tta_flip: bool = True
    tta_shift: int = 2

    def __post_init__(self) -> None:
        unknown = [c for c in self.cascades if c not in CASCADES]
        if unknown or not self.cascades:
            raise FerError(f"face detector: unknown cascade(s) {unknown or '(none)'}; expected some of "
                           f"{', '.join(CASCADES)}")
        if (self.scale_factor <= 1 or self.min_neighbors < 0 or self.min_size < 1 or self.margin <= 0
                or self.max_side < 0
                or not 0 <= self.tta_shift <= 8):
            raise FerError(f"face detector: invalid settings {self}")

    def single_view(self) -> DetectorParams:
        """The same detection and crop, predicting on the crop alone (`predict --no-tta`)."""
        return dataclasses.replace(self, tta_flip=False, tta_shift=0)


_THREAD = threading.local()


def cascade(name: str) -> cv2.CascadeClassifier:
    """The named Haar cascade from the OpenCV wheel, loaded once per thread: a classifier keeps
    working buffers, and one shared by the threads of a serving process crashed it under
    concurrent requests."""
    loaded = _THREAD.__dict__.setdefault("cascades", {})
    if name not in loaded:
        path = Path(cv2.data.haarcascades) / CASCADES[name]
        classifier = cv2.CascadeClassifier(str(path))
        if classifier.empty():
            raise FerError(f"{path}: Haar cascade missing or unreadable (opencv-python-headless 4.x ships them)")
        loaded[name] = classifier
    return loaded[name]


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale of an OpenCV image: gray (H, W), BGR or BGRA (H, W, 3|4)."""
    if image.ndim == 2:
        return image
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(image, code)


def is_face_crop(image: np.ndarray) -> bool:
    """A 48x48 grayscale image is taken to be a face already cropped in the training framing:
    detection cannot work at that size, so it is predicted as it is."""
    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        return False
    return image.ndim == 2 or bool(np.all(image[..., :3] == image[..., :1]))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (K, 4) with every box of `b` (M, 4): (K, M)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _merge(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """One box per face: boxes (of different cascades) overlapping the largest remaining box by
    more than `threshold` are averaged with it, which also steadies the box of a face that
    several cascades find."""
    remaining = boxes[np.argsort(-boxes[:, 2], kind="stable")]
    merged = []
    while len(remaining):
        same = box_iou(remaining[0], remaining)[0] > threshold
        merged.append(remaining[same].mean(axis=0).round())
        remaining = remaining[~same]
    return np.asarray(merged, dtype=np.int64)


def detection_scale(shape: tuple[int, ...], max_side: int) -> float:
    """The factor (<= 1) that brings an image of `shape` to a longer side of at most `max_side`."""
    longest = max(shape[:2])
    return 1.0 if max_side == 0 or longest <= max_side else max_side / longest


def detect_faces(image: np.ndarray, params: DetectorParams) -> np.ndarray:
    """Square face boxes (K, 4) of x, y, w, h in the image's pixels, sorted left to right then top
    to bottom; found on a copy scaled to `params.max_side`."""
    gray = to_gray(image)
    scale = detection_scale(gray.shape, params.max_side)
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    if params.equalize:
        gray = cv2.equalizeHist(gray)
    found = [np.asarray(cascade(name).detectMultiScale(
        gray, scaleFactor=params.scale_factor, minNeighbors=params.min_neighbors,
        minSize=(params.min_size, params.min_size)), dtype=np.int64).reshape(-1, 4)
        for name in params.cascades]
    boxes = np.concatenate(found)
    if len(boxes) == 0:
        return NO_BOXES
    boxes = (_merge(boxes, params.merge_iou) / scale).round().astype(np.int64)
    return boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))]


def crop_boxes(boxes: np.ndarray, params: DetectorParams) -> np.ndarray:
    """The square crop (K, 4) in FER2013's framing around each detected box (may extend past the
    image: the crop repeats the border pixels there)."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    side = boxes[:, 2] * params.margin
    cx = boxes[:, 0] + boxes[:, 2] / 2
    cy = boxes[:, 1] + boxes[:, 3] / 2 + params.shift * boxes[:, 2]
    return np.stack([cx - side / 2, cy - side / 2, side, side], axis=1).round().astype(np.int64)


def crop_faces(image: np.ndarray, boxes: np.ndarray, params: DetectorParams) -> np.ndarray:
    """uint8 (K, 48, 48) grayscale crops of the detected `boxes`, in the training convention."""
    gray = to_gray(image)
    crops = np.zeros((len(boxes), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for k, (x, y, w, h) in enumerate(crop_boxes(boxes, params)):
        x0, y0 = min(max(x, 0), gray.shape[1] - 1), min(max(y, 0), gray.shape[0] - 1)
        region = gray[y0:max(y + h, y0 + 1), x0:max(x + w, x0 + 1)]
        # Outside the image, the crop repeats the border pixels.
        padded = cv2.copyMakeBorder(region, y0 - y, h - (y0 - y) - region.shape[0], x0 - x,
                                    w - (x0 - x) - region.shape[1], cv2.BORDER_REPLICATE)
        shrink = cv2.INTER_AREA if w > IMAGE_SIZE else cv2.INTER_LINEAR
        crops[k] = cv2.resize(padded, (IMAGE_SIZE, IMAGE_SIZE), interpolation=shrink)
    return crops


@dataclasses.dataclass(frozen=True)
class CanvasParams:
    """Synthetic photos for the round-trip measurement: `faces` 48x48 faces per canvas, each
    upscaled to a side in [min_side, max_side] px and rotated by up to `max_rotation` degrees,
    one per cell of a grid, on a background of other faces tiled and blurred."""

    width: int = 640
    height: int = 480
    faces: int = 4
    min_side: int = 64
    max_side: int = 160
    max_rotation: float = 10.0
    tile: int = 48
    blur_sigma: float = 12.0


def _background(tiles: np.ndarray, rng: np.random.Generator, params: CanvasParams) -> np.ndarray:
    rows, cols = -(-params.height // params.tile), -(-params.width // params.tile)
    chosen = tiles[rng.integers(0, len(tiles), size=rows * cols)]
    big = np.vstack([np.hstack([cv2.resize(t, (params.tile, params.tile)) for t in chosen[r * cols:(r + 1) * cols]])
                     for r in range(rows)])[:params.height, :params.width]
    return cv2.GaussianBlur(big, (0, 0), params.blur_sigma)


def compose_canvas(faces: np.ndarray, tiles: np.ndarray, rng: np.random.Generator,
                   params: CanvasParams) -> tuple[np.ndarray, np.ndarray]:
    """Paste `faces` (K <= params.faces, 48, 48) onto a blurred background of `tiles`; returns the
    grayscale canvas and the square (K, 4) where each face was pasted (before its rotation)."""
    canvas = _background(tiles, rng, params)
    grid_cols = int(np.ceil(np.sqrt(params.faces * params.width / params.height)))
    grid_rows = int(np.ceil(params.faces / grid_cols))
    cell_w, cell_h = params.width // grid_cols, params.height // grid_rows
    boxes = np.zeros((len(faces), 4), dtype=np.int64)
    for k, face in enumerate(faces):
        side = int(rng.integers(params.min_side, min(params.max_side, cell_w, cell_h) + 1))
        row, col = divmod(k, grid_cols)
        x = col * cell_w + int(rng.integers(0, cell_w - side + 1))
        y = row * cell_h + int(rng.integers(0, cell_h - side + 1))
        big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        rotation = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2),
                                           float(rng.uniform(-params.max_rotation, params.max_rotation)), 1.0)
        turned = cv2.warpAffine(big, rotation, (side, side), flags=cv2.INTER_LINEAR)
        inside = cv2.warpAffine(np.ones_like(big), rotation, (side, side), flags=cv2.INTER_NEAREST) > 0
        patch = canvas[y:y + side, x:x + side]
        patch[inside] = turned[inside]
        boxes[k] = (x, y, side, side)
    return canvas, boxes
