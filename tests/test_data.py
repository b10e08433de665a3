"""Readers, validation messages, atomic outputs, the quality report and the synthetic faces."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer import CLASS_NAMES, FerError
from fer.data import DataError, load_split, stratified_holdout
from fer.data.prepare import prepare
from fer.data.quality import clean_train, quality_report
from fer.data.sources import detect_format, read_source
from fer.data.synthetic import generate_dataset, generate_split
from fer.params import PrepareParams, SyntheticParams
from tests.conftest import (
    FER2013,
    kaggle_rows,
    pixel_string,
    random_images,
    run,
    tiny_params,
    with_row,
    write_kaggle_csv,
    write_params,
)


def read(path: Path, fmt: str = "auto"):
    return read_source(path, fmt, val_fraction=0.2, seed=0)


# --- formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_kaggle_csv_splits_by_usage(tmp_path: Path, gz: bool) -> None:
    rows = kaggle_rows()
    path = write_kaggle_csv(tmp_path / ("fer2013.csv.gz" if gz else "fer2013.csv"), rows, gz=gz)
    assert detect_format(path) == "kaggle"
    splits = read(path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 7, "val": 7, "test": 7}
    expected = np.array([pixels.split() for _, pixels, _ in rows], dtype=np.uint8).reshape(-1, 48, 48)
    for split, rows_of_split in (("train", slice(0, 7)), ("val", slice(7, 14)), ("test", slice(14, 21))):
        np.testing.assert_array_equal(splits[split].images, expected[rows_of_split])
    assert splits["train"].labels.tolist() == [i % 7 for i in range(7)]


def test_kaggle_detected_by_content_not_name(tmp_path: Path) -> None:
    path = write_kaggle_csv(tmp_path / "data.txt", kaggle_rows(), gz=True)
    assert detect_format(path) == "kaggle"


def test_irregular_whitespace_is_accepted(tmp_path: Path) -> None:
    rows = kaggle_rows()
    rows = with_row(rows, 3, pixels="  " + rows[3][1].replace(" ", "  ") + " ")
    splits = read(write_kaggle_csv(tmp_path / "f.csv", rows))
    np.testing.assert_array_equal(splits["train"].images[3].ravel(), np.array(rows[3][1].split(), dtype=int))


def test_homework_layout_with_unlabelled_test(tmp_path: Path) -> None:
    images = random_images(70)
    (tmp_path / "train.csv").write_text("label,feature\n" + "".join(
        f"{i % 7},{pixel_string(img)}\n" for i, img in enumerate(images)))
    (tmp_path / "test.csv").write_text("id,feature\n" + "".join(
        f"{i},{pixel_string(img)}\n" for i, img in enumerate(images[:5])))
    splits = read(tmp_path / "train.csv")
    assert detect_format(tmp_path / "train.csv") == "homework"
    assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) == 70
    assert set(splits["val"].labels) == set(range(7)) and set(splits["test"].labels) == set(range(7))
    assert len(splits["unlabelled"]) == 5 and (splits["unlabelled"].labels == -1).all()


def _write_folder_dataset(root: Path, splits=("train", "test")) -> None:
    for split in splits:
        for name in CLASS_NAMES:
            folder = root / split / name.upper()
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(random_images(1, i)[0]).resize((64, 64)).convert("RGB").save(folder / f"{i}.png")


def test_image_folders_any_size_and_mode(tmp_path: Path) -> None:
    _write_folder_dataset(tmp_path)
    splits = read(tmp_path)
    assert detect_format(tmp_path) == "folders"
    assert splits["train"].images.shape[1:] == (48, 48) and len(splits["test"]) == 21
    assert len(splits["train"]) + len(splits["val"]) == 21


# --- bad input -------------------------------------------------------------------------------

def _error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        read(path)
    return str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    assert _error(tmp_path / "fer2013.csv") == f"{tmp_path / 'fer2013.csv'}: file not found"


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("")
    assert "file is empty" in _error(tmp_path / "e.csv")


def test_header_only(tmp_path: Path) -> None:
    assert "no data rows" in _error(write_kaggle_csv(tmp_path / "h.csv", []))


def test_renamed_column(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("emotion,pixel,Usage\n0,1 2,Training\n")
    with pytest.raises(DataError, match="line 1: unrecognised header"):
        read(path)
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) pixels"):
        read(path, "kaggle")


@pytest.mark.parametrize("pixels, message", [
    (" ".join(["7"] * 2303), "line 5: 2303 pixel values, expected 2304"),
    (" ".join(["7"] * 2305), "line 5: 2305 pixel values, expected 2304"),
    (" ".join(["7"] * 2303 + ["x1"]), "line 5: pixel 2304 is 'x1', expected an integer in 0-255"),
    (" ".join(["7"] * 10 + ["256"] + ["7"] * 2293), "line 5: pixel 11 is '256', expected an integer in 0-255"),
    (" ".join(["-1"] + ["7"] * 2303), "line 5: pixel 1 is '-1', expected an integer in 0-255"),
    ("", "line 5: empty 'pixels' field, expected 2304 pixel values"),
    # Non-ASCII digits: '²' passes str.isdigit and fails int(); int() reads '٣' as 3.
    (" ".join(["7"] * 9 + ["²"] + ["7"] * 2294), "line 5: pixel 10 is '²', expected an integer in 0-255"),
    (" ".join(["٣"] + ["7"] * 2303), "line 5: pixel 1 is '٣', expected an integer in 0-255"),
    (" ".join(["7"] * 2303 + ["1000"]), "line 5: pixel 2304 is '1000', expected an integer in 0-255"),
])
def test_bad_pixels_name_the_line(tmp_path: Path, pixels: str, message: str) -> None:
    path = write_kaggle_csv(tmp_path / "fer2013.csv", with_row(kaggle_rows(), 3, pixels=pixels))
    assert _error(path) == f"{path} {message}"


@pytest.mark.parametrize("emotion", ["7", "-1", "happy", "2.5", "", "٣"])
def test_label_outside_classes(tmp_path: Path, emotion: str) -> None:
    path = write_kaggle_csv(tmp_path / "fer2013.csv", with_row(kaggle_rows(), 9, emotion=emotion))
    assert _error(path) == (f"{path} line 11: emotion is '{emotion}', expected an integer class id in 0-6")


def test_truncated_gzip_names_the_file_and_the_last_whole_line(tmp_path: Path) -> None:
    whole = write_kaggle_csv(tmp_path / "whole.csv.gz", kaggle_rows(), gz=True).read_bytes()
    cut = whole[:len(whole) // 2]  # cut in the middle of the compressed stream
    path = tmp_path / "fer2013.csv.gz"
    path.write_bytes(cut)
    complete_lines = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    assert 1 < complete_lines < 22
    assert _error(path) == (f"{path}: compressed data is truncated or corrupt after line {complete_lines} "
                            "(Compressed file ended before the end-of-stream marker was reached)")


@pytest.mark.parametrize("gz", [False, True])
def test_bytes_that_are_not_utf8_name_the_line(tmp_path: Path, gz: bool) -> None:
    rows = with_row(kaggle_rows(), 3, usage="Training")
    text = ("emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows)).encode()
    fifth = text.split(b"\n")[4]
    bad = text.replace(fifth, fifth[:-8] + "Träining".encode("latin-1"))  # line 5 in Latin-1
    path = tmp_path / ("fer2013.csv.gz" if gz else "fer2013.csv")
    path.write_bytes(gzip.compress(bad) if gz else bad)
    position = len(fifth) - 8 + 3
    assert _error(path) == f"{path} line 5: not UTF-8 text (byte 0xe4 at byte {position} of the line)"


def test_binary_file_and_file_cut_within_its_header(tmp_path: Path) -> None:
    binary = tmp_path / "photo.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert _error(binary) == f"{binary} line 1: not UTF-8 text (byte 0x89 at byte 1 of the line)"
    cut = tmp_path / "fer2013.csv.gz"
    cut.write_bytes(gzip.compress(b"emotion,pixels,Usage\n0,1 2 3,Training\n")[:15])
    assert _error(cut).startswith(f"{cut}: compressed data is truncated or corrupt within line 1 (")


def test_row_with_extra_field_names_the_line(tmp_path: Path) -> None:
    rows = with_row(kaggle_rows(), 6, usage="Training,extra")
    path = write_kaggle_csv(tmp_path / "fer2013.csv", rows)
    assert _error(path) == f"{path} line 8: 4 fields, expected 3 as in the header"


def test_unknown_usage(tmp_path: Path) -> None:
    path = write_kaggle_csv(tmp_path / "fer2013.csv", with_row(kaggle_rows(), 0, usage="Validation"))
    assert "line 2: Usage is 'Validation', expected one of Training, PublicTest, PrivateTest" in _error(path)


def test_split_with_zero_rows(tmp_path: Path) -> None:
    rows = [r for r in kaggle_rows() if r[2] != "PublicTest"]
    assert "no rows with Usage PublicTest" in _error(write_kaggle_csv(tmp_path / "f.csv", rows))


def test_unreadable_image_and_unknown_class_folder(tmp_path: Path) -> None:
    _write_folder_dataset(tmp_path)
    bad = tmp_path / "train" / "HAPPY" / "broken.png"
    bad.write_bytes(b"not an image")
    assert _error(tmp_path).startswith(f"{bad}: not a readable image")
    bad.unlink()
    (tmp_path / "test" / "contempt").mkdir()
    assert "unknown class folder 'contempt'" in _error(tmp_path)


def test_failed_prepare_keeps_previous_output(tmp_path: Path) -> None:
    """A bad source exits 1 with the message and leaves the previous good output untouched."""
    import shutil

    from tests.conftest import ROOT

    for name in ("stages", "fer"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    write_params(tmp_path / "params.yaml", tiny_params())
    run(["python", "-m", "stages.prepare"], tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "data" / "prepared").iterdir()}
    bad = write_kaggle_csv(tmp_path / "bad.csv", with_row(kaggle_rows(), 3, pixels="1 2 3"))
    write_params(tmp_path / "params.yaml", tiny_params(prepare={"source": "bad.csv"}))
    result = run(["python", "-m", "stages.prepare"], tmp_path, check=False)
    assert result.returncode == 1
    assert f"error: {bad} line 5: 3 pixel values, expected 2304" in result.stderr
    after = {p.name: p.read_bytes() for p in (tmp_path / "data" / "prepared").iterdir()}
    assert after == before
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]


def _valid_npz(path: Path) -> Path:
    np.savez(path, images=random_images(4), labels=np.arange(4), source_index=np.arange(4))
    return path


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "not a readable prepared split (BadZipFile: "),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a readable prepared split (BadZipFile: "),
    (lambda p: p.write_text("emotion,pixels\n"), "not a readable prepared split (ValueError: "),
    (lambda p: np.save(open(p, "wb"), random_images(4)), "not a readable prepared split (ValueError: a single"),
    (lambda p: np.savez(p, images=random_images(4), labels=np.arange(4)), "no array named source_index"),
    (lambda p: np.savez(p, images=random_images(4).astype(float), labels=np.arange(4), source_index=np.arange(4)),
     "'images' is float64 (4, 48, 48), expected uint8 (N, 48, 48)"),
    (lambda p: np.savez(p, images=random_images(4), labels=np.arange(3), source_index=np.arange(4)),
     "'labels' is int64 (3,), expected 4 integers"),
    (lambda p: np.savez(p, images=random_images(4), labels=np.arange(4) + 5, source_index=np.arange(4)),
     "'labels' outside -1-6"),
])
def test_damaged_prepared_split_names_the_file(tmp_path: Path, damage, message: str) -> None:
    path = _valid_npz(tmp_path / "train.npz")
    assert len(load_split(path)) == 4
    damage(path)
    with pytest.raises(FerError) as info:
        load_split(path)
    assert isinstance(info.value, DataError)
    assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)


def test_stage_entry_point_turns_bad_input_into_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    from fer import cli

    path = _valid_npz(tmp_path / "val.npz")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(SystemExit) as info:
        cli.run(lambda argv: load_split(path), [])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: not a readable prepared split") and err.count("\n") == 1


# --- quality report --------------------------------------------------------------------------

def test_quality_report_finds_blanks_and_duplicates(tmp_path: Path) -> None:
    rows = kaggle_rows()
    rows = with_row(rows, 0, pixels=" ".join(["128"] * 2304))       # blank train image
    rows = with_row(rows, 1, pixels=rows[2][1])                      # duplicate within train
    rows = with_row(rows, 15, pixels=rows[4][1])                     # test image duplicated in train
    splits = read(write_kaggle_csv(tmp_path / "f.csv", rows))
    report = quality_report(splits)
    assert report["splits"]["train"]["blank_images"] == 1
    assert report["splits"]["train"]["duplicates_within"] == 1
    assert report["duplicates_across"] == {"train~val": 0, "train~test": 1, "val~test": 0}
    cleaned, dropped = clean_train(splits, drop_blank=True, drop_cross_split_duplicates=True)
    assert dropped == {"blank": 1, "cross_split_duplicates": 1} and len(cleaned) == 5


def test_stratified_holdout_is_seeded_and_per_class() -> None:
    labels = np.repeat(np.arange(7), 20)
    a, b = stratified_holdout(labels, 0.25, 3), stratified_holdout(labels, 0.25, 3)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(labels[a], minlength=7).tolist() == [5] * 7


# --- synthetic faces -------------------------------------------------------------------------

def test_synthetic_is_deterministic_and_fer_like() -> None:
    a, b = generate_split(300, seed=5), generate_split(300, seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, generate_split(300, seed=6).images)
    counts = np.bincount(a.labels, minlength=7)
    assert counts.min() >= 1 and counts[1] == counts.min() and counts[3] == counts.max()


def test_synthetic_masks_cover_the_drawn_features() -> None:
    split = generate_split(200, seed=1)
    masks = split.masks.astype(bool)
    area = masks.mean(axis=(1, 2))
    assert (area > 0.02).all() and (area < 0.25).all()
    # Features are drawn darker than the skin around them.
    for image, mask in zip(split.images[:50].astype(float), masks[:50]):
        ring = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        ring[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = True
        assert image[mask].mean() < image[ring & ~mask].mean()
    # Masks follow the expression: the mouth region is larger for surprise than for neutral.
    lower = masks[:, 30:, :].sum(axis=(1, 2))
    assert lower[split.labels == 5].mean() > lower[split.labels == 6].mean()


def test_synthetic_label_noise_only_on_train() -> None:
    clean, noisy = generate_split(2000, seed=2), generate_split(2000, seed=2, label_noise=0.2)
    assert 0.15 < np.mean(clean.labels != noisy.labels) < 0.25
    splits = generate_dataset(50, 50, 50, seed=0, label_noise=0.5)
    np.testing.assert_array_equal(splits["val"].labels, generate_split(50, 1).labels)


def test_prepare_records_source_checksum(tmp_path: Path) -> None:
    path = write_kaggle_csv(tmp_path / "fer2013.csv", kaggle_rows())
    params = PrepareParams(str(path), "auto", 0.1, 0, False, False, SyntheticParams(7, 7, 7, 0.0, 0))
    splits, report = prepare(params, tmp_path)
    assert len(report["source"]["sha256"]) == 64 and set(splits) == {"train", "val", "test"}


@pytest.mark.skipif(not FER2013.is_file(), reason=f"real FER2013 not present at {FER2013}")
def test_real_fer2013_canonical_counts() -> None:
    splits = read(FER2013)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [28709, 3589, 3589]
    assert splits["train"].class_counts() == [3995, 436, 4097, 7215, 4830, 3171, 4965]
