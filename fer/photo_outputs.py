"""The files of the `photos` stage: the round trip of labelled test faces through synthetic photos,
found and classified by the code path of `python -m fer.predict` (real data only)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from fer.data import Split
from fer.evaluation import confusion
from fer.faces import CanvasParams, DetectorParams
from fer.io import save_figure, write_json
from fer.models import load_model
from fer.plots import confusion_figure, image_gallery
from fer.predict import annotate, explain, round_trip, round_trip_summary

# The stage's round trip: the first test faces, 4 per photo (30 photos: seconds). The full
# measurement (all PrivateTest faces) is benchmarks/face_roundtrip.py.
REAL_PHOTO_FACES = 120
GALLERY_PHOTOS = 4


def real_photos(name: str, model_path: Path, test: Split, out: Path, faces: int = REAL_PHOTO_FACES) -> dict[str, Any]:
    """The round trip of the first `faces` labelled test faces through synthetic photos
    (`fer.predict.round_trip`, the `predict` command's detector and crop): its summary (also
    written to real_photos.json, naming the figures), a gallery of annotated photos with each
    face's Grad-CAM, and the confusion matrix of the predictions through detection + crop."""
    model = load_model(model_path)
    labelled = np.flatnonzero(test.labels >= 0)[:faces]
    detector, canvas = DetectorParams(), CanvasParams()
    result, kept = round_trip(model, test.images[labelled], test.labels[labelled], detector, canvas, seed=0,
                              keep=GALLERY_PHOTOS)
    annotated = [annotate(photo, found, explain(model, found)["grad_cam"] if len(found) else None)
                 for photo, found in kept]
    captions = [f"photo {i + 1}: {len(found)} face(s) found of {canvas.faces}" for i, (_, found) in enumerate(kept)]
    save_figure(out / "real_photos_gallery.png",
                image_gallery(annotated, captions, "Pasted test faces found again; Grad-CAM of the predicted class",
                              columns=2, cell_inches=(5.2, 4.2), fontsize=8))
    hit = result.detected
    matrix = None
    if hit.any():  # images that are not faces can leave nothing to tabulate
        matrix = out / "real_photos_confusion.png"
        save_figure(matrix, confusion_figure(confusion(result.labels[hit], result.predicted_crop[hit]),
                                             "through detection + crop (recall per true class)", normalised=True))
    summary = round_trip_summary(result) | {"model": name, "detector": dataclasses.asdict(detector),
                                            "canvas": dataclasses.asdict(canvas), "gallery": "real_photos_gallery.png",
                                            "confusion": matrix and matrix.name}
    write_json(out / "real_photos.json", summary)
    return summary
