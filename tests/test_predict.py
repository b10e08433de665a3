"""The predict command and its library: face crops, photos, videos, bad inputs, and the round trip
of real FER2013 faces through synthetic photos (skipped without the file)."""
from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fer import CLASS_NAMES, cli
from fer.data.synthetic import generate_split
from fer.faces import CanvasParams, DetectorParams, box_iou, compose_canvas, crop_faces, detect_faces, is_face_crop
from fer.models import build_model, model_params, save_checkpoint
from fer.predict import (
    NO_FACE,
    ROW_FIELDS,
    load_predictor,
    main,
    predict_image,
    probabilities,
    round_trip,
    round_trip_summary,
)
from tests.conftest import FER2013, ROOT, png_declaring

PARAMS = model_params({"arch": "cnn4", "batch_norm": True, "dropout_conv": 0.0, "dropout_fc": 0.3, "fc_hidden": 32},
                      "model")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained CNN4: the tests compare paths through the code, not accuracy."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(build_model(PARAMS), path)
    return path


def _predict(argv: list[str]) -> None:
    cli.run(main, argv)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv") as handle:
        return list(csv.DictReader(handle))


def test_face_crops_skip_detection(tmp_path: Path, checkpoint: Path) -> None:
    """48x48 grayscale images are crops: predicted as they are, with or without --no-detect, and
    their probabilities are the model's on the arrays (averaged over the views unless --no-tta)."""
    faces = generate_split(7, seed=1).images
    folder = tmp_path / "crops"
    folder.mkdir()
    for i, face in enumerate(faces):
        cv2.imwrite(str(folder / f"face_{i}.png"), face)
    _predict([str(folder), "--model", str(checkpoint), "--out", str(tmp_path / "auto")])
    _predict([str(folder), "--model", str(checkpoint), "--out", str(tmp_path / "forced"), "--no-detect"])
    auto, forced = _rows(tmp_path / "auto"), _rows(tmp_path / "forced")
    assert auto == forced and len(auto) == len(faces)
    model = load_predictor(str(checkpoint))
    expected = probabilities(model, faces, views=DetectorParams())
    got = np.array([[float(r[c]) for c in CLASS_NAMES] for r in auto])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    _predict([str(folder), "--model", str(checkpoint), "--out", str(tmp_path / "plain"), "--no-tta"])
    plain = np.array([[float(r[c]) for c in CLASS_NAMES] for r in _rows(tmp_path / "plain")])
    np.testing.assert_allclose(plain, probabilities(model, faces, torch.device("cpu")), atol=2e-6)
    assert np.abs(plain - got).max() > 1e-4  # the views are averaged by default (an untrained net: small)
    assert all((r["x"], r["y"], r["w"], r["h"]) == ("0", "0", "48", "48") for r in auto)
    assert [r["top"] for r in auto] == [CLASS_NAMES[i] for i in expected.argmax(1)]
    lines = [json.loads(line) for line in (tmp_path / "auto" / "predictions.jsonl").read_text().splitlines()]
    assert [line["top"] for line in lines] == [r["top"] for r in auto]
    assert all(abs(line["margin"] - (sorted(p)[-1] - sorted(p)[-2])) < 1e-5
               for line, p in zip(lines, expected))
    assert sorted(p.name for p in (tmp_path / "auto" / "annotated").iterdir()) == sorted(
        f"face_{i}.png" for i in range(len(faces)))


def test_photo_with_faces_and_one_without(tmp_path: Path, checkpoint: Path) -> None:
    """A synthetic photo: rows for the faces found (boxes near where they were pasted), an
    annotated copy and, with --explain, the Grad-CAM figure; a photo without a face is a row."""
    faces = generate_split(8, seed=2).images
    rng = np.random.default_rng(0)
    photo, pasted = compose_canvas(faces[:4], faces, rng, CanvasParams())
    empty, _ = compose_canvas(faces[:0], faces, rng, CanvasParams())
    cv2.imwrite(str(tmp_path / "photo.jpg"), photo)
    cv2.imwrite(str(tmp_path / "empty.png"), empty)
    out = tmp_path / "out"
    _predict([str(tmp_path / "photo.jpg"), str(tmp_path / "empty.png"), "--model", str(checkpoint),
              "--out", str(out), "--explain"])
    rows = _rows(out)
    assert list(rows[0]) == list(ROW_FIELDS)
    found = [r for r in rows if r["file"].endswith("photo.jpg")]
    assert len(found) >= 2 and all(r["note"] == "" for r in found)
    boxes = np.array([[int(r[k]) for k in "xywh"] for r in found])
    assert (box_iou(boxes, pasted).max(1) > 0.5).all()
    assert [r for r in rows if r["file"].endswith("empty.png")] == [
        {**{k: "" for k in ROW_FIELDS}, "file": str(tmp_path / "empty.png"), "note": NO_FACE}]
    annotated = cv2.imread(str(out / "annotated" / "photo.png"))
    # The photo, then a legend panel beside it: labels never cover the faces.
    assert annotated.shape[0] == photo.shape[0] and annotated.shape[1] > photo.shape[1]
    legend = annotated[:, photo.shape[1]:]
    assert (legend == 255).mean() > 0.8 and (legend < 128).any()
    assert (out / "explain" / "photo.png").is_file() and not (out / "explain" / "empty.png").exists()


def test_video(tmp_path: Path, checkpoint: Path) -> None:
    """A generated clip: every N-th frame is predicted (the same as predicting that frame alone),
    and the annotated video and the emotion-over-time plot are written."""
    faces = generate_split(7, seed=4).images
    rng = np.random.default_rng(30)  # a layout where the cascade finds a face in the predicted frames
    photo, _ = compose_canvas(faces[:2], faces, rng, CanvasParams(width=320, height=240, faces=2, max_side=100))
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for shift in range(12):
        writer.write(cv2.cvtColor(np.roll(photo, shift, axis=1), cv2.COLOR_GRAY2BGR))
    writer.release()
    out = tmp_path / "out"
    _predict([str(clip), "--model", str(checkpoint), "--out", str(out), "--every", "5"])
    rows = _rows(out)
    assert sorted({int(r["frame"]) for r in rows}) == [0, 5, 10]
    assert {float(r["time_s"]) for r in rows} == {0.0, 0.5, 1.0}
    found = 0
    for index in (0, 5, 10):
        capture = cv2.VideoCapture(str(clip))
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        _, frame = capture.read()
        capture.release()
        alone = predict_image(load_predictor(str(checkpoint)), frame, DetectorParams())
        frame_rows = [r for r in rows if r["frame"] == str(index)]
        assert len(frame_rows) == max(len(alone), 1)  # a frame without a face has a row saying so
        assert [int(r["x"]) for r in frame_rows if r["x"]] == alone.boxes[:, 0].tolist()
        found += len(alone)
    assert found > 0  # the boxes above were compared for real
    annotated = cv2.VideoCapture(str(out / "clip_annotated.avi"))
    assert annotated.isOpened() and int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    annotated.release()
    assert (out / "clip_emotions.png").stat().st_size > 1000


@pytest.mark.parametrize("case", ["not_an_image", "broken_video", "not_a_checkpoint", "missing_input"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, checkpoint: Path, case: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    good = tmp_path / "face.png"
    cv2.imwrite(str(good), generate_split(7, seed=0).images[0])
    bad = {"not_an_image": tmp_path / "notes.png", "broken_video": tmp_path / "clip.avi",
           "not_a_checkpoint": tmp_path / "model.pt", "missing_input": tmp_path / "nowhere.jpg"}[case]
    if case != "missing_input":
        bad.write_text("this is text, not what its name says\n")
    model = bad if case == "not_a_checkpoint" else checkpoint
    inputs = [str(good)] + ([] if case == "not_a_checkpoint" else [str(bad)])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        _predict([*inputs, "--model", str(model), "--out", str(out)])
    assert exit_info.value.code == 1
    message = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("model ")]
    assert len(message) == 1 and message[0].startswith(f"error: {bad}: "), message
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))  # no temporary output left behind


def test_huge_image_is_refused_from_its_header(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A 20000x20000 PNG of a few kilobytes is refused with one line before any decoding; an image
    under the limit is decoded as before."""
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_declaring(20000, 20000))
    assert huge.stat().st_size < 100_000
    decode = cv2.imdecode

    def no_decoding(*args: object) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(SystemExit) as exit_info:
        _predict([str(huge), "--model", str(checkpoint), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"error: {huge}: declares 400,000,000 pixels, more than the limit of 50,000,000; "
                     "scale it down first")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(cv2, "imdecode", decode)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((60, 80), 128, np.uint8))
    with pytest.raises(SystemExit):
        _predict([str(small), "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--max-pixels", "4000"])
    assert "declares 80x60 pixels, more than the limit of 4,000" in capsys.readouterr().err
    _predict([str(small), "--model", str(checkpoint), "--out", str(tmp_path / "out")])
    assert _rows(tmp_path / "out")[0]["note"] == NO_FACE


def test_synthetic_model_on_photos_is_named_and_warned(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The first line names the model and its training data; one trained on the synthetic
    default gets a warning when applied to photos."""
    path = tmp_path / "synthetic.pt"
    data = {"source_kind": "synthetic", "source_file": "synthetic", "prepared_sha256": "ab" * 32,
            "prepared_splits": "train,val"}
    save_checkpoint(build_model(PARAMS), path, data=data)
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((120, 160), 90, np.uint8))
    _predict([str(photo), "--model", str(path), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"model {path} (cnn4), trained on the synthetic default faces; prepared data sha256 abababababab"
    assert lines[1].startswith("warning: this model has only seen the synthetic default faces")


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), generate_split(7, seed=0).images[0])
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious.txt").write_text("mine")
    with pytest.raises(SystemExit):
        _predict([str(face), "--model", str(checkpoint), "--out", str(tmp_path / "keep")])
    assert "not a prediction output folder" in capsys.readouterr().err
    assert (tmp_path / "keep" / "precious.txt").read_text() == "mine"


def test_help_and_exit_status_from_the_shell(tmp_path: Path) -> None:
    help_text = subprocess.run([sys.executable, "-m", "fer.predict", "--help"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert "--no-detect" in help_text and "--every" in help_text and "models:/" in help_text
    result = subprocess.run([sys.executable, "-m", "fer.predict", str(tmp_path / "none.png"), "--out",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip() == f"error: {tmp_path / 'none.png'}: no such file or folder"


def test_detection_from_several_threads_agrees() -> None:
    """The served photo model predicts requests in several threads at once: each thread gets its
    own cascade (a shared one crashed the server), and every thread finds the same boxes."""
    from concurrent.futures import ThreadPoolExecutor

    faces = generate_split(8, seed=2).images
    photo, _ = compose_canvas(faces[:4], faces, np.random.default_rng(0), CanvasParams(width=1280, height=960))
    expected = detect_faces(photo, DetectorParams())
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: detect_faces(photo, DetectorParams()), range(16)))
    assert all(np.array_equal(boxes, expected) for boxes in found)


def test_crop_and_detection_geometry() -> None:
    """The crop of a pasted square (margin 1) is the face itself, scaled; 48x48 gray is a crop;
    a flat image has no face."""
    face = generate_split(7, seed=5).images[0]
    canvas = np.full((200, 200), 90, dtype=np.uint8)
    canvas[40:136, 60:156] = cv2.resize(face, (96, 96), interpolation=cv2.INTER_CUBIC)
    crop = crop_faces(canvas, np.array([[60, 40, 96, 96]]), DetectorParams(margin=1.0, shift=0.0))[0]
    assert np.abs(crop.astype(int) - face.astype(int)).mean() < 4
    wide = crop_faces(canvas, np.array([[60, 40, 96, 96]]), DetectorParams(margin=1.5))[0]
    assert wide.shape == (48, 48) and wide[0, 0] == 90  # padded from the border, not black
    assert is_face_crop(face) and not is_face_crop(canvas)
    assert len(detect_faces(np.full((240, 320), 128, np.uint8), DetectorParams())) == 0


def _fer2013_faces(usage: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` rows of one Usage of the Kaggle file, read in place (streamed, not copied)."""
    labels, images = [], []
    with gzip.open(FER2013, "rt") as handle:
        next(handle)
        for line in handle:
            if line.rstrip().endswith(usage):
                emotion, values, _ = line.rstrip().split(",")
                labels.append(int(emotion))
                images.append(np.array(values.split(), dtype=np.uint8).reshape(48, 48))
                if len(labels) == n:
                    break
    return np.stack(images), np.array(labels)


@pytest.mark.skipif(not FER2013.is_file(), reason=f"FER2013 not found at {FER2013}")
def test_round_trip_on_real_faces(checkpoint: Path) -> None:
    """80 PrivateTest faces pasted into photos: most are found, the boxes sit on the pasted
    squares and the crops look like the original faces (model-independent numbers; the full
    measurement with a trained model is benchmarks/face_roundtrip.py)."""
    images, labels = _fer2013_faces("PrivateTest", 80)
    result, _ = round_trip(load_predictor(str(checkpoint)), images, labels, DetectorParams(), CanvasParams(), seed=0)
    summary = round_trip_summary(result)
    assert summary["faces"] == 80 and summary["canvases"] == 20
    assert summary["detection_rate"] >= 0.6, summary
    assert summary["iou_median"] >= 0.75, summary
    assert summary["crop_correlation_median"] >= 0.5, summary
    assert summary["false_positives_per_canvas"] <= 1.0, summary
