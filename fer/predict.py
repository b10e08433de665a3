"""Expressions on photos and videos with a trained model: find the faces, crop them to the
training framing, predict, and write rows, annotated copies, explanations and video plots.

One code path serves the `python -m fer.predict` command, the MLflow photo model
(`fer.photo_model`) and the report's round-trip measurement: `predict_image` turns an image into
`Faces` (boxes, 48x48 crops, class probabilities), and `face_rows` turns those into rows.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from fer import CLASS_NAMES, IMAGE_SIZE, FerError, cli
from fer.faces import (
    CanvasParams,
    DetectorParams,
    box_iou,
    compose_canvas,
    crop_boxes,
    crop_faces,
    detect_faces,
    is_face_crop,
    to_gray,
)
from fer.inference import predict_logits, to_input
from fer.io import atomic_dir, save_figure
from fer.models import Network, load_model
from fer.pretrained import DEFAULT_MODEL, describe, trained_on_synthetic
from fer.runtime import select_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
MLFLOW_SCHEMES = ("models:/", "runs:/")
CHECKPOINT_ARTIFACT = "model.pt"  # the photo model's copy of the checkpoint, under artifacts/
NO_FACE = "no face found"
ROW_FIELDS = ("file", "frame", "time_s", "face", "x", "y", "w", "h", *CLASS_NAMES, "top", "probability",
              "margin", "note")
MAX_PIXELS = 50_000_000  # largest image decoded: a 50-megapixel photo, 150 MB as BGR
MATCH_IOU = 0.4  # a detected box counts as a pasted face when it overlaps it at least this much
EXPLAIN_METHODS = ("grad_cam", "gradient")


class PredictError(FerError):
    """A bad input file, video or model: the message names it."""


@dataclasses.dataclass(frozen=True)
class Faces:
    """The faces of one image: detected boxes (K, 4) x, y, w, h (the whole image for a face crop),
    the crop squares they were cut from (K, 4), the 48x48 crops and the probabilities (K, 7)."""

    boxes: np.ndarray
    crop_boxes: np.ndarray
    crops: np.ndarray
    probabilities: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


# ---------------------------------------------------------------- models

def _load_registered(uri: str, device: torch.device | str) -> Network:
    """A model from the MLflow store, rebuilt from the checkpoint it carries (the photo model's
    `artifacts/model.pt`, the tensor model's `extra_files/model.pt`), so that the network, its
    options and its data record are the ones training wrote and Grad-CAM finds its layers."""
    import mlflow

    from fer import tracking

    db = tracking.sqlite_path(tracking.tracking_uri())
    if db is not None and not db.is_file():  # MLflow would create an empty store there
        raise PredictError(f"{uri}: no MLflow store at {db} (run from the project root or set MLFLOW_TRACKING_URI)")
    tracking.connect()  # bounded waits; an unreachable server is one line
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except mlflow.exceptions.MlflowException as error:
        raise PredictError(f"{uri}: {str(error.message).splitlines()[0]}") from None
    for checkpoint in (local / "artifacts" / CHECKPOINT_ARTIFACT, local / "extra_files" / CHECKPOINT_ARTIFACT):
        if checkpoint.is_file():
            return load_model(checkpoint, device)
    raise PredictError(f"{uri}: the model carries no {CHECKPOINT_ARTIFACT} (not logged by this project's "
                       "train or report stage)")


def load_predictor(spec: str, device: torch.device | str = "cpu") -> Network:
    """The model named by `spec`: a `model.pt` path, or an MLflow model URI (`models:/fer-cnn4@champion`,
    `models:/fer-cnn4-photo@champion`, `models:/fer-cnn4/latest`, `runs:/<id>/model`). A checkpoint
    is loaded weights-only; a file
    that is not one raises `fer.models.CheckpointError` naming it."""
    if spec.startswith(MLFLOW_SCHEMES):
        return _load_registered(spec, device)
    return load_model(Path(spec), device)


# ---------------------------------------------------------------- faces and rows

def probabilities(model: Network, crops: np.ndarray, device: torch.device | str = "cpu",
                  views: DetectorParams | None = None) -> np.ndarray:
    """Class probabilities (K, 7) of uint8 crops (K, 48, 48): from the logits averaged over the
    detector's test-time views (`views.tta_flip`, `views.tta_shift`, see `fer.inference.tta_views`)
    as `predict` gives them, or of the crop alone without `views`."""
    if len(crops) == 0:
        return np.zeros((0, len(CLASS_NAMES)), dtype=np.float32)
    flip, shift = (views.tta_flip, views.tta_shift) if views else (False, 0)
    logits = predict_logits(model, crops, torch.device(device), flip_tta=flip, shift_tta=shift)
    return torch.softmax(logits, dim=1).numpy()


def predict_image(model: Network, image: np.ndarray, detector: DetectorParams, detect: bool = True,
                  device: torch.device | str = "cpu") -> Faces:
    """The faces of an OpenCV image (gray, BGR or BGRA). Without detection, or for a 48x48
    grayscale image (already a face crop), the whole image is the one face."""
    gray = to_gray(image)
    if detect and not is_face_crop(image):
        boxes = detect_faces(gray, detector)
        squares, crops = crop_boxes(boxes, detector), crop_faces(gray, boxes, detector)
    else:
        boxes = squares = np.array([[0, 0, gray.shape[1], gray.shape[0]]], dtype=np.int64)
        crops = cv2.resize(gray, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)[None]
    return Faces(boxes, squares, crops, probabilities(model, crops, device, detector))


def face_rows(faces: Faces, **where: Any) -> list[dict[str, Any]]:
    """One row per face (`where` names the image: file, frame, ...); one row saying so when the
    image has no face. Fields: ROW_FIELDS."""
    base = {field: None for field in ROW_FIELDS} | where
    if len(faces) == 0:
        return [base | {"note": NO_FACE}]
    rows = []
    for k, (box, probs) in enumerate(zip(faces.boxes, faces.probabilities)):
        order = np.argsort(-probs)
        rows.append(base | {"face": k, **dict(zip("xywh", map(int, box))),
                            **{name: round(float(p), 6) for name, p in zip(CLASS_NAMES, probs)},
                            "top": CLASS_NAMES[order[0]], "probability": round(float(probs[order[0]]), 6),
                            "margin": round(float(probs[order[0]] - probs[order[1]]), 6)})
    return rows


def explain(model: Network, faces: Faces, methods: Sequence[str] = EXPLAIN_METHODS) -> dict[str, np.ndarray]:
    """Maps (K, 48, 48) of each face for its predicted class, one per registered attribution
    method named (`fer.saliency.METHODS`), with each method's default options."""
    from fer.saliency import attribution_maps, default_options

    device = next(model.parameters()).device
    x = to_input(torch.as_tensor(faces.crops), device).contiguous()
    targets = torch.as_tensor(faces.probabilities.argmax(1), device=device)
    return attribution_maps(model, x, targets, default_options(methods))


# ---------------------------------------------------------------- drawing

def _put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], font: float, colour: tuple[int, int, int],
              thickness: int) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font, colour, thickness, cv2.LINE_AA)


def annotate(image: np.ndarray, faces: Faces, cams: np.ndarray | None = None) -> np.ndarray:
    """A BGR copy of `image` with each face's box and number, and beside the image a legend with
    each face's top-3 classes: in group photos, labels drawn at the faces would cover each other
    and the neighbouring faces. With `cams` (K, 48, 48), each face's Grad-CAM is blended into the
    square it was cropped from."""
    canvas = cv2.cvtColor(to_gray(image), cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3].copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    font = max(0.4, min(height, width) / 900)
    for k in range(len(faces)):
        if cams is not None:
            x, y, w, h = faces.crop_boxes[k]
            heat = cams[k] / cams[k].max() if cams[k].max() > 0 else cams[k]
            colour = cv2.applyColorMap(cv2.resize((heat * 255).astype(np.uint8), (w, h)), cv2.COLORMAP_JET)
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
            region = canvas[y0:y1, x0:x1]
            canvas[y0:y1, x0:x1] = cv2.addWeighted(region, 0.6, colour[y0 - y:y1 - y, x0 - x:x1 - x], 0.4, 0)
        x, y, w, h = (int(v) for v in faces.boxes[k])
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (0, 255, 0), thickness)
        (tw, th), _ = cv2.getTextSize(str(k + 1), cv2.FONT_HERSHEY_SIMPLEX, font, thickness)
        # The number sits in a filled tag on the box's top edge, inside the image.
        tx, ty = min(max(x, 0), width - tw - 4), min(max(y, th + 4), height - 1)
        cv2.rectangle(canvas, (tx, ty - th - 4), (tx + tw + 4, ty), (0, 255, 0), -1)
        _put_text(canvas, str(k + 1), (tx + 2, ty - 2), font, (0, 0, 0), thickness)
    return np.hstack([canvas, _legend(faces, height, thickness)])


def _legend(faces: Faces, height: int, thickness: int) -> np.ndarray:
    """A white panel as high as the image: one line per face, its number and top-3 classes. Its
    width depends on the height only, so that the frames of an annotated video keep one size."""
    lines = [f"{k + 1}: " + ", ".join(f"{CLASS_NAMES[c]} {p[c]:.2f}" for c in np.argsort(-p)[:3])
             for k, p in enumerate(faces.probabilities)] or [NO_FACE]
    widest = "88: " + ", ".join([f"{max(CLASS_NAMES, key=len)} 0.00"] * 3)
    full = max(0.4, height / 900)
    (panel_w, full_h), _ = cv2.getTextSize(widest, cv2.FONT_HERSHEY_SIMPLEX, full, thickness)
    # The font shrinks with the number of lines so that every face's line fits the image's height.
    font = min(full, 0.8 * height / (len(lines) + 1) / 22)
    text_h = cv2.getTextSize(widest, cv2.FONT_HERSHEY_SIMPLEX, font, thickness)[0][1]
    panel = np.full((height, panel_w + 2 * full_h, 3), 255, dtype=np.uint8)
    step = int(text_h * 1.8)
    for i, text in enumerate(lines):
        _put_text(panel, text, (full_h, step * (i + 1)), font, (0, 0, 0), thickness)
    return panel


# ---------------------------------------------------------------- files

def declared_pixels(data: bytes | np.ndarray) -> tuple[int, str] | None:
    """The pixel count the file's header declares and a description ("6000x4000"), read without
    decoding the pixels; None when no image header is recognised."""
    import io
    import re
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():  # Pillow warns of large images; the caller decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data if isinstance(data, bytes) else data.tobytes())) as header:
                width, height = header.size
                return width * height, f"{width}x{height}"
    except Image.DecompressionBombError as error:  # over twice Pillow's own limit: it names the count
        count = int((re.findall(r"\d+", str(error)) or [2 * Image.MAX_IMAGE_PIXELS])[0])
        return count, f"{count:,}"
    except Exception:  # noqa: BLE001 - Pillow raises many types for unknown or broken headers
        return None


def check_declared_size(data: bytes | np.ndarray, name: str, error: type[FerError] = PredictError,
                        max_pixels: int = MAX_PIXELS) -> None:
    """`error` naming `name` unless the bytes start with an image header declaring at most
    `max_pixels` pixels. A few hundred kilobytes of PNG can declare billions of pixels, and
    decoding them would take gigabytes before any later check could run."""
    declared = declared_pixels(data) if len(data) else None
    if declared is None:
        raise error(f"{name}: not a readable image (PNG, JPEG, BMP, TIFF, WebP, PGM/PPM)")
    if declared[0] > max_pixels:
        raise error(f"{name}: declares {declared[1]} pixels, more than the limit of {max_pixels:,}; "
                    "scale it down first")


def decode_image_bytes(data: bytes | np.ndarray, name: str, error: type[FerError] = PredictError,
                       max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes as an 8-bit OpenCV image (gray, BGR or BGRA), or `error` naming
    `name`: what the command and the photo model both read, so both accept the same images. The
    size in the header is checked before anything is decoded."""
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    check_declared_size(buffer, name, error, max_pixels)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise error(f"{name}: not a readable image (PNG, JPEG, BMP, TIFF, WebP, PGM/PPM)")
    if image.dtype == np.uint16:
        return (image // 257).astype(np.uint8)
    if image.dtype != np.uint8:
        raise error(f"{name}: {image.dtype} pixels; expected an 8- or 16-bit image")
    return image


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as an 8-bit OpenCV image, or PredictError naming the file."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise PredictError(f"{path}: cannot be read ({error.strerror})") from None
    return decode_image_bytes(data, str(path), max_pixels=max_pixels)


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files to predict on: each file as given, and the images and videos under each folder
    (recursively, sorted)."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not found:
                raise PredictError(f"{path}: folder holds no image or video file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise PredictError(f"{path}: no such file or folder")
    return files


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


@dataclasses.dataclass(frozen=True)
class Frame:
    index: int
    time_s: float
    image: np.ndarray
    faces: Faces


def video_frames(model: Network, path: Path, detector: DetectorParams, every: int, detect: bool = True,
                 device: torch.device | str = "cpu") -> tuple[float, int, Iterator[Frame]]:
    """The video's frame rate, its frame count (0 when the container does not say) and its
    every `every`-th frame with its faces (the frames in between are skipped undecoded)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise PredictError(f"{path}: cannot be opened as a video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)

    def frames() -> Iterator[Frame]:
        try:
            index = 0
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                yield Frame(index, index / fps, image, predict_image(model, image, detector, detect, device))
                for _ in range(every - 1):
                    if not capture.grab():
                        return
                index += every
        finally:
            capture.release()

    return fps, count, frames()


def _unique_stems(files: Sequence[Path]) -> list[str]:
    """Output names for the inputs: the file stem, with a counter where two inputs share one."""
    seen: dict[str, int] = {}
    names = []
    for path in files:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}_{count + 1}")
    return names


class _VideoWriter:
    """An MJPG .avi opened on its first frame (which fixes the size), written frame by frame so
    that a long video never sits in memory."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self.writer = path, fps, None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            height, width = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"MJPG"), self.fps, (width, height))
            if not self.writer.isOpened():
                raise PredictError(f"{self.path}: cannot write a video here")
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def _largest_face(faces: Faces) -> np.ndarray:
    if len(faces) == 0:
        return np.full(len(CLASS_NAMES), np.nan)
    return faces.probabilities[int(np.argmax(faces.boxes[:, 2] * faces.boxes[:, 3]))]


def predict_video_file(model: Network, path: Path, name: str, out: Path, detector: DetectorParams, every: int,
                       detect: bool, device: torch.device) -> list[dict[str, Any]]:
    """Rows of every `every`-th frame, `<name>_annotated.avi` (those frames, at the speed of the
    original) and `<name>_emotions.png` (the largest face's probabilities against time)."""
    from tqdm import tqdm

    from fer.predict_plots import emotion_timeline

    fps, count, frames = video_frames(model, path, detector, every, detect, device)
    rows, times, series = [], [], []
    video = _VideoWriter(out / f"{name}_annotated.avi", fps / every)
    try:
        for frame in tqdm(frames, desc=path.name, unit="frame", total=-(-count // every) or None, leave=False,
                          disable=None):
            rows += face_rows(frame.faces, file=str(path), frame=frame.index, time_s=round(frame.time_s, 3))
            video.write(annotate(frame.image, frame.faces))
            times.append(frame.time_s)
            series.append(_largest_face(frame.faces))
    finally:
        video.close()
    if not times:
        raise PredictError(f"{path}: video has no readable frame")
    save_figure(out / f"{name}_emotions.png", emotion_timeline(np.asarray(times), np.asarray(series), path.name))
    return rows


def write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    """predictions.csv and predictions.jsonl (the caller's directory is written atomically)."""
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "predictions.jsonl", "w") as handle:
        handle.writelines(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n" for row in rows)


# ---------------------------------------------------------------- round trip on pasted faces

@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """Per pasted face: where it was pasted, whether a detected box matched it (IoU >= MATCH_IOU),
    that IoU, the Pearson correlation of its crop with the original face (a model-free check of
    the framing; NaN where undetected), its label, the prediction on the original 48x48 face and
    through detection + crop (-1 where undetected) and on the crop of the exact pasted square (the
    best a detector could do: what is left is the model's sensitivity to the rotation and the
    resampling); per canvas, the detections that matched no pasted face."""

    pasted: np.ndarray
    detected: np.ndarray
    iou: np.ndarray
    correlation: np.ndarray
    labels: np.ndarray
    predicted_original: np.ndarray
    predicted_crop: np.ndarray
    predicted_pasted: np.ndarray
    false_positives: np.ndarray


def match_boxes(truth: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For each true box: the index of the detected box overlapping it most, whether that IoU
    reaches MATCH_IOU, and the IoU (0 when unmatched); plus the number of detections that match
    no true box."""
    if len(boxes) == 0:
        return np.zeros(len(truth), dtype=np.int64), np.zeros(len(truth), dtype=bool), np.zeros(len(truth)), 0
    overlap = box_iou(truth, boxes)
    best = overlap.max(1)
    hit = best >= MATCH_IOU
    return overlap.argmax(1), hit, np.where(hit, best, 0.0), int((overlap.max(0) < MATCH_IOU).sum())


def round_trip(model: Network, images: np.ndarray, labels: np.ndarray, detector: DetectorParams,
               canvas: CanvasParams, seed: int, device: torch.device | str = "cpu",
               keep: int = 0) -> tuple[RoundTrip, list[tuple[np.ndarray, Faces]]]:
    """Paste `images` (N, 48, 48) `canvas.faces` at a time onto synthetic photos (background tiles
    from the same images), run `predict_image` on each, and match the detections to the pasted
    squares. Returns the per-face result and the first `keep` canvases with their faces."""
    rng = np.random.default_rng(seed)
    n = len(images)
    pasted = np.zeros((n, 4), dtype=np.int64)
    detected, iou, correlation = np.zeros(n, dtype=bool), np.zeros(n), np.full(n, np.nan)
    predicted_crop = np.full(n, -1, dtype=np.int64)
    pasted_crops = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    false_positives, kept = [], []
    for start in range(0, n, canvas.faces):
        rows = slice(start, min(start + canvas.faces, n))
        photo, pasted[rows] = compose_canvas(images[rows], images, rng, canvas)
        faces = predict_image(model, photo, detector, True, device)
        pasted_crops[rows] = crop_faces(photo, pasted[rows], dataclasses.replace(detector, margin=1.0, shift=0.0))
        best, detected[rows], iou[rows], extra = match_boxes(pasted[rows], faces.boxes)
        for k in np.flatnonzero(detected[rows]):
            predicted_crop[start + k] = faces.probabilities[best[k]].argmax()
            correlation[start + k] = np.corrcoef(faces.crops[best[k]].ravel(), images[start + k].ravel())[0, 1]
        false_positives.append(extra)
        if len(kept) < keep:
            kept.append((photo, faces))
    predicted_original = probabilities(model, images, device, detector).argmax(1)
    predicted_pasted = probabilities(model, pasted_crops, device, detector).argmax(1)
    return RoundTrip(pasted, detected, iou, correlation, np.asarray(labels), predicted_original, predicted_crop,
                     predicted_pasted, np.asarray(false_positives)), kept


def round_trip_summary(result: RoundTrip) -> dict[str, float]:
    """The headline numbers: detection rate, box IoU of the detected faces, agreement of the crop's
    prediction with the original face's, accuracies against the labels."""
    hit = result.detected
    n_hit = int(hit.sum())

    def share(mask: np.ndarray) -> float:
        return float(mask.mean()) if len(mask) else float("nan")

    return {"faces": len(hit), "canvases": len(result.false_positives), "detected": n_hit,
            "detection_rate": share(hit),
            "iou_median": float(np.median(result.iou[hit])) if n_hit else float("nan"),
            "iou_mean": float(result.iou[hit].mean()) if n_hit else float("nan"),
            "crop_correlation_median": float(np.nanmedian(result.correlation[hit])) if n_hit else float("nan"),
            "agreement": share(result.predicted_crop[hit] == result.predicted_original[hit]),
            "agreement_pasted_square": share(result.predicted_pasted[hit] == result.predicted_original[hit]),
            "accuracy_crop_detected": share(result.predicted_crop[hit] == result.labels[hit]),
            "accuracy_original_detected": share(result.predicted_original[hit] == result.labels[hit]),
            "accuracy_original_all": share(result.predicted_original == result.labels),
            "false_positives_per_canvas": float(result.false_positives.mean()) if len(result.false_positives) else 0.0}


# ---------------------------------------------------------------- command line

def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier prediction output."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "predictions.csv").is_file())):
        raise PredictError(f"{out}: exists and is not a prediction output folder; choose another --out")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fer-predict", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Predict facial expressions on photos, folders of photos and videos with a trained model. "
                    "Writes predictions.csv and predictions.jsonl (one row per face, or one row saying an image "
                    "has no face), an annotated copy of each image, and for each video an annotated video and "
                    "an emotion-over-time plot. The output folder is replaced as a whole, only on success.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively), "
                        f"video files ({', '.join(VIDEO_SUFFIXES)})")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a model.pt checkpoint (the default: the "
                        "CNN4 trained on FER2013 that ships in the package, docs/model_card.md; the pipeline's own: "
                        "models/cnn4/model.pt), or an MLflow model URI such as models:/fer-cnn4@champion, "
                        "models:/fer-cnn4-photo@champion or models:/fer-cnn4/latest")
    parser.add_argument("--out", default="predictions", help="output folder")
    parser.add_argument("--no-detect", action="store_true", help="each image is one face already cropped (48x48 "
                        "grayscale images are taken as crops anyway)")
    parser.add_argument("--explain", nargs="*", metavar="METHOD", help="also write each face's attribution maps "
                        "for its predicted class (explain/<image>.png): the methods named, any attribution method "
                        "registered in fer.saliency (an unknown name lists them); none named: "
                        f"{' and '.join(EXPLAIN_METHODS)}")
    parser.add_argument("--every", type=int, default=10, help="videos: predict on every N-th frame")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse images whose header declares "
                        "more pixels than this (checked before decoding)")
    parser.add_argument("--no-tta", action="store_true", help="predict on each crop alone instead of averaging it "
                        "with its shifted and mirrored views (faster, answers less steady against small shifts of "
                        "the face box: docs/predict.md)")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be at least 1")
    explained = (args.explain or list(EXPLAIN_METHODS)) if args.explain is not None else []
    if explained:
        from fer.saliency import METHODS  # captum: imported only when asked for

        if unknown := [m for m in explained if m not in METHODS]:
            parser.error(f"--explain: unknown method(s) {', '.join(unknown)}; registered: {', '.join(METHODS)}")
    from tqdm import tqdm

    from fer.plots import saliency_figure

    files = collect_inputs(args.inputs)
    out = Path(args.out)
    _check_out(out)
    device = select_device()
    model = load_predictor(args.model, device)
    detector, detect = DetectorParams(), not args.no_detect
    print(describe(model, args.model), file=sys.stderr)
    if detect and trained_on_synthetic(model):
        print("warning: this model has only seen the synthetic default faces; on photos its answers mean little "
              "(the default --model is a FER2013-trained CNN4)", file=sys.stderr)
    if args.no_tta:
        detector = detector.single_view()
    rows: list[dict[str, Any]] = []
    with atomic_dir(out) as tmp:
        for path, name in tqdm(list(zip(files, _unique_stems(files))), desc="inputs", unit="file", disable=None):
            if is_video(path):
                rows += predict_video_file(model, path, name, tmp, detector, args.every, detect, device)
                continue
            image = read_image(path, args.max_pixels)
            faces = predict_image(model, image, detector, detect, device)
            rows += face_rows(faces, file=str(path))
            maps = explain(model, faces, explained) if explained and len(faces) else None
            (tmp / "annotated").mkdir(exist_ok=True)
            if not cv2.imwrite(str(tmp / "annotated" / f"{name}.png"),
                               annotate(image, faces, maps.get("grad_cam") if maps else None)):
                raise PredictError(f"{tmp / 'annotated'}: cannot write {name}.png")
            if maps:
                captions = [f"face {k}: {r['top']} {r['probability']:.2f}"
                            for k, r in enumerate(face_rows(faces))]
                save_figure(tmp / "explain" / f"{name}.png",
                            saliency_figure(faces.crops, maps, captions, f"{path.name}: predicted class"))
        write_rows(tmp, rows)
    n_faces = sum(r["face"] is not None for r in rows)
    print(f"{len(files)} input(s), {n_faces} face(s), {sum(r['note'] == NO_FACE for r in rows)} image(s) or "
          f"frame(s) without a face; wrote {out}/predictions.csv", file=sys.stderr)


def cli_main() -> None:
    """Console-script entry point (`fer-predict`)."""
    cli.run(main)


if __name__ == "__main__":
    cli_main()
