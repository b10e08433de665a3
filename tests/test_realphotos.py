"""Scoring detections against annotated photos, and the shipped model on real photos (the
annotated development set is read in place; those tests skip without it)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fer import CLASS_NAMES, cli
from fer.predict import main
from fer.realphotos import AnnotatedFace, AnnotatedImage, assign, matching, read_manifest, score_image, summarise
from tests.conftest import REAL_PHOTOS

FACE = AnnotatedFace((100, 100, 50, 60), 3, "clear", True)
OPTIONAL = AnnotatedFace((300, 100, 30, 30), None, None, False)


def test_a_detection_matches_by_overlap_or_by_its_centre() -> None:
    annotated = np.array([FACE.box])
    # A bigger box around the face (IoU < 0.3, centre inside), one overlapping it, one beside it.
    detected = np.array([[60, 60, 130, 140], [110, 110, 50, 60], [200, 100, 50, 60]])
    assert matching(detected, annotated)[:, 0].tolist() == [True, True, False]


def test_each_face_gets_its_best_detection_once() -> None:
    detected = np.array([[101, 101, 50, 60], [90, 90, 80, 80], [500, 500, 40, 40]])
    chosen, false_faces = assign(detected, [FACE, OPTIONAL])
    assert chosen.tolist() == [0, -1] and false_faces == 1


def test_summary_counts_misses_false_faces_and_labels() -> None:
    probs = np.eye(7)[[3, 0, 5]]
    hit = score_image(AnnotatedImage("a.jpg", False, (FACE, OPTIONAL)),
                      np.array([[100, 100, 50, 60], [300, 100, 30, 30], [0, 0, 20, 20]]), probs)
    missed = score_image(AnnotatedImage("b.jpg", False, (FACE,)), np.zeros((0, 4)), np.zeros((0, 7)))
    negative = score_image(AnnotatedImage("c.jpg", True, ()), np.array([[5, 5, 30, 30]]), probs[:1])
    summary = summarise([hit, missed, negative])
    assert (summary["required_faces"], summary["required_found"]) == (2, 1)
    assert summary["missed_required"] == ["b.jpg"]
    assert summary["detections_on_negatives"] == 1
    assert summary["false_faces"] == 2  # the stray box in a.jpg and the one on the negative photo
    assert summary["expression"] == {"faces": 1, "right": 1, "accuracy": 1.0}
    assert summary["expression_per_class"]["happy"]["right"] == 1


def test_manifest_errors_name_the_entry(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps([{"file": "x.jpg", "kind": "image", "faces": [{"box": [1]}]}]))
    with pytest.raises(Exception, match=r"entry 0 \(x.jpg\)"):
        read_manifest(tmp_path)


# Single-face photos whose expression is labelled `clear`, one per class the model gets right there.
CLEAR_PHOTOS = ("d02.jpeg", "d03.jpeg", "d04.jpg", "d09.jpeg", "d11.jpeg")  # neutral, fear, surprise, sad, angry


@pytest.mark.skipif(not (REAL_PHOTOS / "manifest.json").is_file(),
                    reason=f"annotated photos not found at {REAL_PHOTOS}")
def test_shipped_model_labels_clear_faces_in_real_photos(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`predict` with its default model (the shipped FER2013 CNN4) finds the face in each photo
    and gives it its label; the first line of its report names the model and its data."""
    images = {image.file: image for image in read_manifest(REAL_PHOTOS)[0]}
    files = [REAL_PHOTOS / name for name in CLEAR_PHOTOS]
    cli.run(main, [*map(str, files), "--out", str(tmp_path / "out")])
    assert "trained on fer2013.csv" in capsys.readouterr().err.splitlines()[0]
    with open(tmp_path / "out" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    for path in files:
        face = images[path.name].faces[0]
        assert face.confidence == "clear" and face.label is not None
        found = [r for r in rows if r["file"] == str(path) and r["face"]]
        boxes = np.array([[int(r[k]) for k in "xywh"] for r in found]).reshape(-1, 4)
        best = matching(boxes, np.array([face.box]))[:, 0]
        assert best.any(), f"{path.name}: face not found"
        assert found[int(np.argmax(best))]["top"] == CLASS_NAMES[face.label], path.name
