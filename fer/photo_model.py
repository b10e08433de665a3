"""The photo model: an MLflow pyfunc that takes photos and returns one row per face found.

Input: a DataFrame with a column `image` of base64-encoded PNG or JPEG files. Output: one row per
detected face with the image's index (its row in the input), the box (x, y, w, h), the 7 class
probabilities, the top class, its probability and its margin over the second class. An image
without a face has no row. The model bundles the checkpoint (`artifacts/model.pt`), the face
detector's settings, the request limits and this package's code, and predicts through
`fer.predict.predict_image`: the same code path as the `predict` command. A request over its
limits (images, bytes, pixels declared by an image's header) fails as a whole before anything is
decoded, with HTTP 400 from the scoring server.

The model is logged from code (`fer/photo_pyfunc.py`, which MLflow runs when it loads the model),
so serving it unpickles nothing; this module imports mlflow inside its functions only.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

import fer
from fer import CLASS_NAMES, FerError, tracking
from fer.faces import DetectorParams
from fer.models import Network
from fer.predict import (
    CHECKPOINT_ARTIFACT,
    MAX_PIXELS,
    check_declared_size,
    decode_image_bytes,
    face_rows,
    predict_image,
)

INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("image", "face", "x", "y", "w", "h", *CLASS_NAMES, "top", "probability", "margin")
# Described in the model's requirements; `mlflow models serve --env-manager local` uses the running venv.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "opencv-python-headless", "captum", "matplotlib",
                "pyyaml", "tqdm")


# The modules a photo model's answers come from: with its weights and settings they identify a
# version, so an edit of report or plotting code registers nothing new.
PREDICTION_CODE = ("photo_pyfunc.py", "photo_model.py", "predict.py", "faces.py", "models.py", "training.py")


class BadPhoto(FerError, ValueError):
    """An input row that is not a base64-encoded image, or a request over the limits; the message
    names the row or the limit."""


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one request may hold, so that no request can take the server's memory: images per
    request, encoded bytes (base64 text) per request, and pixels per image as its header declares
    them (checked before decoding)."""

    max_images: int = 16
    max_bytes: int = 32 * 2**20
    max_pixels: int = MAX_PIXELS


def image_bytes(encoded: Any, index: int) -> bytes:
    """The encoded image of one input row: base64 text (or raw bytes, in-process)."""
    try:
        return encoded if isinstance(encoded, bytes) else base64.b64decode(str(encoded), validate=True)
    except (binascii.Error, ValueError):
        raise BadPhoto(f"image {index}: not base64 text") from None


def check_request(encoded: Sequence[Any], limits: RequestLimits) -> None:
    """BadPhoto when the request holds more images or bytes than `limits` allow."""
    if len(encoded) > limits.max_images:
        raise BadPhoto(f"{len(encoded)} images in one request, more than the limit of {limits.max_images}; "
                       "send them in several requests")
    size = sum(len(item) if isinstance(item, (bytes, str)) else 0 for item in encoded)
    if size > limits.max_bytes:
        raise BadPhoto(f"{size:,} bytes of images in one request, more than the limit of {limits.max_bytes:,}")


def encode_image(image: np.ndarray, extension: str = ".png") -> str:
    """Base64 text of an image encoded as PNG (or JPEG with extension='.jpg'): the input format."""
    ok, data = cv2.imencode(extension, image)
    if not ok:
        raise BadPhoto(f"cannot encode an image of shape {image.shape} as {extension}")
    return base64.b64encode(data.tobytes()).decode("ascii")


def predict_photos(model: Network, encoded: Sequence[Any], detector: DetectorParams,
                   device: torch.device | str = "cpu", limits: RequestLimits = RequestLimits()) -> pd.DataFrame:
    """One row per face found in the photos (columns OUTPUT_COLUMNS); the request is checked
    against `limits` and every photo's header read first, so a bad or oversized request fails as a
    whole before any decoding; then the photos are decoded and predicted one at a time."""
    check_request(encoded, limits)
    files = [image_bytes(item, i) for i, item in enumerate(encoded)]
    for i, data in enumerate(files):
        check_declared_size(data, f"image {i}", BadPhoto, limits.max_pixels)
    rows = []
    for i, data in enumerate(files):  # one decoded photo in memory at a time
        faces = predict_image(model, decode_image_bytes(data, f"image {i}", BadPhoto, limits.max_pixels), detector,
                              True, device)
        rows += [row for row in face_rows(faces, image=i) if row["face"] is not None]
    frame = pd.DataFrame([{column: row[column] for column in OUTPUT_COLUMNS} for row in rows],
                         columns=list(OUTPUT_COLUMNS))
    return frame.astype({c: "int64" for c in ("image", "face", "x", "y", "w", "h")}
                        | {c: "float64" for c in (*CLASS_NAMES, "probability", "margin")})


def photo_config(detector: DetectorParams, limits: RequestLimits) -> dict[str, Any]:
    """The photo model's settings as its `model_config` (plain JSON values)."""
    return {"detector": dataclasses.asdict(detector), "limits": dataclasses.asdict(limits)}


def settings_from_config(config: dict[str, Any]) -> tuple[DetectorParams, RequestLimits]:
    detector = dict(config["detector"])
    detector["cascades"] = tuple(detector["cascades"])
    return DetectorParams(**detector), RequestLimits(**config["limits"])


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    kinds = {"image": "long", "face": "long", "x": "long", "y": "long", "w": "long", "h": "long", "top": "string"}
    return ModelSignature(inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
                          outputs=Schema([ColSpec(kinds.get(c, "double"), c) for c in OUTPUT_COLUMNS]))


def log_photo_model(checkpoint_path: str | Path, detector: DetectorParams = DetectorParams(),
                    limits: RequestLimits = RequestLimits()) -> str:
    """Log the photo model of a checkpoint into the active MLflow run (models from code:
    `fer/photo_pyfunc.py`, settings in `model_config`); return its model URI."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / CHECKPOINT_ARTIFACT  # the artifact's file name is fixed: loaders find it
        shutil.copyfile(checkpoint_path, checkpoint)
        code = Path(__file__).with_name("photo_pyfunc.py")
        info = mlflow.pyfunc.log_model(name="photo_model", python_model=str(code),
                                       artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
                                       model_config=photo_config(detector, limits),
                                       code_paths=[str(Path(fer.__file__).parent)], signature=signature(),
                                       pip_requirements=tracking.pinned_requirements(REQUIREMENTS))
    return info.model_uri


def register_photo_model(checkpoint_path: str | Path, registered_name: str,
                         detector: DetectorParams = DetectorParams(), limits: RequestLimits = RequestLimits()) -> str:
    """The version of `registered_name` (e.g. `fer-cnn4-photo`) that holds this checkpoint with
    these settings and prediction code, logged into the active run and registered only when no
    version has them (versions are tagged with the three sha256s); it becomes `@champion`.
    Returns the version."""
    config = json.dumps(photo_config(detector, limits), sort_keys=True).encode()
    code = hashlib.sha256()
    for name in PREDICTION_CODE:
        code.update((Path(__file__).parent / name).read_bytes())
    tags = {"checkpoint_sha256": tracking.file_sha256(Path(checkpoint_path)),
            "config_sha256": hashlib.sha256(config).hexdigest(), "code_sha256": code.hexdigest()}
    return tracking.register(registered_name, tags, lambda: log_photo_model(checkpoint_path, detector, limits))
