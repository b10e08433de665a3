"""Readers for the two CSV layouts of FER2013: Kaggle's `emotion,pixels,Usage` and the
course-homework `train.csv` (`label,feature`) / `test.csv` (`id,feature`).

Files are read in chunks so that peak memory stays bounded on the full dataset, and every
error names the file, the line and what was expected.
"""
from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fer import NUM_CLASSES
from fer.data import UNLABELLED, DataError, Split
from fer.data.pixels import parse_pixel_strings

KAGGLE_COLUMNS = ("emotion", "pixels", "Usage")
KAGGLE_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
HOMEWORK_TRAIN_COLUMNS = ("label", "feature")
HOMEWORK_TEST_COLUMNS = ("id", "feature")
CHUNK_ROWS = 4096


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def read_header(path: Path) -> list[str]:
    """The column names of a (possibly gzipped) CSV, or DataError if it is missing or empty."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty, expected a CSV header line")
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:  # type: ignore[operator]
            first = handle.readline()
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise DataError(f"{path}: cannot be read as a text CSV ({error})") from None
    if not first.strip():
        raise DataError(f"{path}: file is empty, expected a CSV header line")
    return [name.strip() for name in first.strip().split(",")]


def _chunks(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, pd.DataFrame]]:
    """Yield (file line of the first row, chunk) after checking the header has `columns`."""
    header = read_header(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path} line 1: missing column(s) {', '.join(missing)}; "
                        f"found {', '.join(header)}; expected {', '.join(columns)}")
    reader = pd.read_csv(path, usecols=list(columns), dtype=str, chunksize=CHUNK_ROWS,
                         compression="gzip" if is_gzip(path) else None, skip_blank_lines=False,
                         keep_default_na=False, engine="c")
    line = 2
    try:
        for chunk in reader:
            yield line, chunk
            line += len(chunk)
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: malformed CSV near line {line}: {error}") from None


def _parse_labels(values: pd.Series, path: Path, first_line: int, column: str) -> np.ndarray:
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() | (numeric < 0) | (numeric >= NUM_CLASSES) | (numeric % 1 != 0)
    if bad.any():
        offset = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path} line {first_line + offset}: {column} is {values.iloc[offset]!r}, "
                        f"expected an integer class id in 0-{NUM_CLASSES - 1}")
    return numeric.to_numpy(dtype=np.int64)


def _require_rows(path: Path, n_rows: int) -> None:
    if n_rows == 0:
        raise DataError(f"{path}: header only, no data rows")


def read_kaggle_csv(path: Path) -> dict[str, Split]:
    """FER2013 in Kaggle's layout: Training -> train, PublicTest -> val, PrivateTest -> test."""
    images, labels, usages = [], [], []
    for first_line, chunk in _chunks(path, KAGGLE_COLUMNS):
        usage = chunk["Usage"].str.strip()
        unknown = ~usage.isin(list(KAGGLE_USAGE))
        if unknown.any():
            offset = int(np.flatnonzero(unknown.to_numpy())[0])
            raise DataError(f"{path} line {first_line + offset}: Usage is {usage.iloc[offset]!r}, "
                            f"expected one of {', '.join(KAGGLE_USAGE)}")
        labels.append(_parse_labels(chunk["emotion"], path, first_line, "emotion"))
        images.append(parse_pixel_strings(chunk["pixels"].tolist(), str(path), first_line))
        usages.append(usage.map(KAGGLE_USAGE).to_numpy(dtype=object))
    _require_rows(path, sum(map(len, labels)))
    all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    all_usage = np.concatenate(usages)
    splits = {}
    for usage_name, split_name in KAGGLE_USAGE.items():
        rows = np.flatnonzero(all_usage == split_name)
        if len(rows) == 0:
            raise DataError(f"{path}: no rows with Usage {usage_name} (the {split_name} split is empty)")
        splits[split_name] = Split(all_images[rows], all_labels[rows], rows.astype(np.int64))
    return splits


def read_homework_csv(path: Path, labelled: bool) -> Split:
    """`train.csv` (`label,feature`) or, with labelled=False, `test.csv` (`id,feature`)."""
    columns = HOMEWORK_TRAIN_COLUMNS if labelled else HOMEWORK_TEST_COLUMNS
    images, labels = [], []
    for first_line, chunk in _chunks(path, columns):
        if labelled:
            labels.append(_parse_labels(chunk["label"], path, first_line, "label"))
        else:
            labels.append(np.full(len(chunk), UNLABELLED, dtype=np.int64))
        images.append(parse_pixel_strings(chunk["feature"].tolist(), str(path), first_line, "feature"))
    _require_rows(path, sum(map(len, labels)))
    all_images = np.concatenate(images)
    return Split(all_images, np.concatenate(labels), np.arange(len(all_images), dtype=np.int64))
