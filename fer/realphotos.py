"""Scoring face detection and expression prediction against hand-annotated real photos.

The annotations follow the layout of a development set's `manifest.json` (one object per file:
`kind` image|video, `negative`, `faces` with `box` [x, y, w, h], FER2013 `label` or null,
`confidence` clear|likely, `required`; videos carry `keyframes` of `{frame, faces}`). Annotated
boxes run from the eyebrows to the chin, smaller than most detectors' boxes, so a detection
matches an annotated face when their IoU is at least MATCH_IOU or the detection's centre lies
inside the annotated box. A missed required face is a miss; a detection on an optional face is
neither a hit nor a false face; a detection matching no annotated face is a false face.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fer import CLASS_NAMES, FerError
from fer.faces import box_iou

MATCH_IOU = 0.3


@dataclasses.dataclass(frozen=True)
class AnnotatedFace:
    box: tuple[int, int, int, int]
    label: int | None
    confidence: str | None  # "clear" | "likely" | None (no label)
    required: bool


@dataclasses.dataclass(frozen=True)
class AnnotatedImage:
    file: str
    negative: bool
    faces: tuple[AnnotatedFace, ...]


@dataclasses.dataclass(frozen=True)
class AnnotatedVideo:
    file: str
    keyframes: dict[int, tuple[AnnotatedFace, ...]]


def _faces(items: Sequence[dict[str, Any]], where: str) -> tuple[AnnotatedFace, ...]:
    try:
        return tuple(AnnotatedFace(tuple(int(v) for v in f["box"]), f["label"], f["confidence"], bool(f["required"]))
                     for f in items)
    except (KeyError, TypeError, ValueError) as error:
        raise FerError(f"{where}: face annotation without a valid box/label/confidence/required ({error})") from None


def read_manifest(folder: str | Path) -> tuple[list[AnnotatedImage], list[AnnotatedVideo]]:
    """The annotated stills and videos of `folder/manifest.json`, in manifest order."""
    path = Path(folder) / "manifest.json"
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FerError(f"{path}: not a readable manifest ({error.__class__.__name__})") from None
    images, videos = [], []
    for i, entry in enumerate(entries):
        where = f"{path}, entry {i} ({entry.get('file', '?')})"
        if entry.get("kind") == "video":
            videos.append(AnnotatedVideo(entry["file"], {int(k["frame"]): _faces(k["faces"], where)
                                                         for k in entry.get("keyframes", [])}))
        elif entry.get("kind") == "image":
            faces = _faces(entry["faces"] or [], where)
            images.append(AnnotatedImage(entry["file"], bool(entry.get("negative")), faces))
        else:
            raise FerError(f"{where}: kind is {entry.get('kind')!r}, expected 'image' or 'video'")
    return images, videos


def matching(detected: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """(K, M) bool: detection k matches annotated face m (IoU >= MATCH_IOU or centre inside)."""
    detected = np.asarray(detected, float).reshape(-1, 4)
    annotated = np.asarray(annotated, float).reshape(-1, 4)
    cx = detected[:, 0] + detected[:, 2] / 2
    cy = detected[:, 1] + detected[:, 3] / 2
    inside = ((cx[:, None] >= annotated[None, :, 0]) & (cx[:, None] <= annotated[None, :, 0] + annotated[None, :, 2])
              & (cy[:, None] >= annotated[None, :, 1]) & (cy[:, None] <= annotated[None, :, 1] + annotated[None, :, 3]))
    return inside | (box_iou(detected, annotated) >= MATCH_IOU)


def assign(detected: np.ndarray, faces: Sequence[AnnotatedFace]) -> tuple[np.ndarray, int]:
    """For each annotated face the index of the detection assigned to it (-1: none), each detection
    used once, the best-overlapping pairs first; and the number of detections matching no face."""
    boxes = np.asarray([f.box for f in faces], float).reshape(-1, 4)
    match = matching(detected, boxes)
    overlap = np.where(match, box_iou(detected, boxes) + 1e-6, 0.0)
    chosen = np.full(len(faces), -1, dtype=np.int64)
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        k, m = np.unravel_index(flat, overlap.shape)
        if overlap[k, m] == 0:
            break
        if chosen[m] < 0 and k not in chosen:
            chosen[m] = k
    return chosen, int((~match.any(axis=1)).sum())


@dataclasses.dataclass(frozen=True)
class FaceResult:
    """One annotated face: whether a detection was assigned to it and the class predicted there
    (-1 where none)."""

    face: AnnotatedFace
    found: bool
    predicted: int


@dataclasses.dataclass(frozen=True)
class ImageResult:
    file: str
    negative: bool
    detections: int
    false_faces: int
    faces: tuple[FaceResult, ...]


def score_image(image: AnnotatedImage, boxes: np.ndarray, probabilities: np.ndarray) -> ImageResult:
    """The detections (K, 4) and their class probabilities (K, 7) of one annotated image, scored."""
    chosen, false_faces = assign(boxes, image.faces)
    results = tuple(FaceResult(face, k >= 0, int(np.argmax(probabilities[k])) if k >= 0 else -1)
                    for face, k in zip(image.faces, chosen))
    return ImageResult(image.file, image.negative, len(boxes), false_faces, results)


def _accuracy(faces: list[FaceResult]) -> dict[str, Any]:
    right = sum(f.predicted == f.face.label for f in faces)
    return {"faces": len(faces), "right": right, "accuracy": right / len(faces) if faces else float("nan")}


def summarise(results: Sequence[ImageResult]) -> dict[str, Any]:
    """Detection and expression figures over scored images: required faces found, detections on
    negative images, false faces, accuracy on the labelled faces found (all, `clear` ones, per class)."""
    faces = [f for r in results for f in r.faces]
    required = [f for f in faces if f.face.required]
    labelled = [f for f in faces if f.found and f.face.label is not None]
    per_class = {name: _accuracy([f for f in labelled if f.face.label == c]) for c, name in enumerate(CLASS_NAMES)}
    return {"images": len(results), "faces_detected": sum(r.detections for r in results),
            "required_faces": len(required), "required_found": sum(f.found for f in required),
            "recall_required": sum(f.found for f in required) / len(required) if required else float("nan"),
            "negative_images": sum(r.negative for r in results),
            "detections_on_negatives": sum(r.detections for r in results if r.negative),
            "false_faces": sum(r.false_faces for r in results),
            "labelled_faces": sum(f.face.label is not None for f in faces),
            "expression": _accuracy(labelled),
            "expression_clear": _accuracy([f for f in labelled if f.face.confidence == "clear"]),
            "expression_per_class": per_class,
            "missed_required": [r.file for r in results for f in r.faces if f.face.required and not f.found],
            "false_faces_by_image": {r.file: r.false_faces for r in results if r.false_faces}}
