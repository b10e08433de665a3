"""Readers for the two CSV layouts of FER2013: Kaggle's `emotion,pixels,Usage` and the
course-homework `train.csv` (`label,feature`) / `test.csv` (`id,feature`).

Files are read block by block with Arrow's CSV reader (decompression and parsing run in C++,
off the main thread), so peak memory stays bounded on the full dataset. Every error names the
file, the line and what was expected: when Arrow rejects a file (truncated gzip, bytes that are
not UTF-8, a row with the wrong number of fields) the file is scanned again line by line to find
where.
"""
from __future__ import annotations

import csv
import gzip
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from fer import NUM_CLASSES
from fer.data import UNLABELLED, DataError, Split
from fer.data.pixels import parse_pixel_buffer

KAGGLE_COLUMNS = ("emotion", "pixels", "Usage")
KAGGLE_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
HOMEWORK_TRAIN_COLUMNS = ("label", "feature")
HOMEWORK_TEST_COLUMNS = ("id", "feature")
# About 500 FER2013 rows per block: every temporary array of the pixel parser stays small enough
# for the allocator to reuse its memory instead of asking the system for fresh pages each block.
BLOCK_BYTES = 4 << 20


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


# What reading a damaged gzip stream raises: EOFError when it is cut short, BadGzipFile (an
# OSError) or zlib.error when bytes are wrong.
COMPRESSION_ERRORS = (EOFError, OSError, zlib.error)


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def _broken_stream(path: Path, lines_read: int, error: BaseException) -> str:
    if not isinstance(error, (EOFError, zlib.error, gzip.BadGzipFile)):  # permissions, I/O
        return f"{path}: cannot be read ({error})"
    where = f"after line {lines_read}" if lines_read else "within line 1"
    return f"{path}: compressed data is truncated or corrupt {where} ({error})"


def _not_utf8(path: Path, line: int, raw: bytes, error: UnicodeDecodeError) -> str:
    return f"{path} line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line)"


def read_header(path: Path) -> list[str]:
    """The column names of a (possibly gzipped) CSV, or DataError if it is missing or empty."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty, expected a CSV header line")
    try:
        with _open_binary(path) as handle:
            raw = handle.readline()
    except COMPRESSION_ERRORS as error:
        raise DataError(_broken_stream(path, 0, error)) from None
    try:
        first = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(_not_utf8(path, 1, raw, error)) from None
    if not first.strip():
        raise DataError(f"{path}: file is empty, expected a CSV header line")
    return [name.strip() for name in first.strip().split(",")]


def locate_unreadable(path: Path, n_fields: int) -> str | None:
    """Where a CSV stops being readable, scanning line by line: the first line that is not UTF-8
    or has other than `n_fields` fields, or the end of a truncated or corrupt gzip stream.
    None if every line reads."""
    line = 0
    try:
        with _open_binary(path) as handle:
            for line, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    return _not_utf8(path, line, raw, error)
                fields = next(csv.reader([text]), [])
                if fields and len(fields) != n_fields:
                    return f"{path} line {line}: {len(fields)} fields, expected {n_fields} as in the header"
    except COMPRESSION_ERRORS as error:
        return _broken_stream(path, line, error)
    return None


def _batches(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Yield (file line of the first row, batch of string columns) after checking the header."""
    header = read_header(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path} line 1: missing column(s) {', '.join(missing)}; "
                        f"found {', '.join(header)}; expected {', '.join(columns)}")
    line = 2
    try:
        reader = pa_csv.open_csv(
            pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None),
            read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES),
            # One row per line (so rows count lines) and blank lines kept as (empty) rows.
            parse_options=pa_csv.ParseOptions(newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: pa.string() for c in columns}, include_columns=list(columns),
                strings_can_be_null=False, quoted_strings_can_be_null=False))
        for batch in reader:
            yield line, batch
            line += batch.num_rows
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(locate_unreadable(path, len(header))
                        or f"{path}: malformed CSV near line {line}: {error}") from None


def _strings(batch: pa.RecordBatch, column: str) -> list[str]:
    return batch.column(column).to_pylist()


def _number(text: str) -> float:
    try:
        return float(text) if text.isascii() else math.nan
    except ValueError:
        return math.nan


def _parse_labels(values: list[str], path: Path, first_line: int, column: str) -> np.ndarray:
    numeric = np.fromiter(map(_number, values), dtype=np.float64, count=len(values))
    good = (numeric >= 0) & (numeric < NUM_CLASSES) & (numeric % 1 == 0)
    if not good.all():
        offset = int(np.flatnonzero(~good)[0])
        raise DataError(f"{path} line {first_line + offset}: {column} is {values[offset]!r}, "
                        f"expected an integer class id in 0-{NUM_CLASSES - 1}")
    return numeric.astype(np.int64)


def _parse_pixels(batch: pa.RecordBatch, column: str, path: Path, first_line: int) -> np.ndarray:
    strings = batch.column(column)
    _, offsets, data = strings.buffers()
    start = strings.offset
    return parse_pixel_buffer(
        np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8),
        np.frombuffer(offsets, dtype=np.int32)[start:start + len(strings) + 1],
        str(path), first_line, column)


def _require_rows(path: Path, n_rows: int) -> None:
    if n_rows == 0:
        raise DataError(f"{path}: header only, no data rows")


def read_kaggle_csv(path: Path) -> dict[str, Split]:
    """FER2013 in Kaggle's layout: Training -> train, PublicTest -> val, PrivateTest -> test."""
    images, labels, usages = [], [], []
    for first_line, batch in _batches(path, KAGGLE_COLUMNS):
        usage = [u.strip() for u in _strings(batch, "Usage")]
        for offset, name in enumerate(usage):
            if name not in KAGGLE_USAGE:
                raise DataError(f"{path} line {first_line + offset}: Usage is {name!r}, "
                                f"expected one of {', '.join(KAGGLE_USAGE)}")
        labels.append(_parse_labels(_strings(batch, "emotion"), path, first_line, "emotion"))
        images.append(_parse_pixels(batch, "pixels", path, first_line))
        usages.append(np.array([KAGGLE_USAGE[u] for u in usage], dtype=object))
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
    for first_line, batch in _batches(path, columns):
        if labelled:
            labels.append(_parse_labels(_strings(batch, "label"), path, first_line, "label"))
        else:
            labels.append(np.full(batch.num_rows, UNLABELLED, dtype=np.int64))
        images.append(_parse_pixels(batch, "feature", path, first_line))
    _require_rows(path, sum(map(len, labels)))
    all_images = np.concatenate(images)
    return Split(all_images, np.concatenate(labels), np.arange(len(all_images), dtype=np.int64))
