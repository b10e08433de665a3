"""Fast, strict parsing of space-separated 48x48 pixel strings (the FER2013 CSV encoding).

The fast path hands a whole chunk to numpy's C parser in one call; only when that fails or the
counts disagree does the slow path walk the rows one by one: it accepts irregular whitespace
and names the exact bad row otherwise.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from fer import IMAGE_SIZE, NUM_PIXELS
from fer.data import DataError


def _parse_rows(strings: Sequence[object], where: str, first_line: int, column: str) -> np.ndarray:
    """Row-by-row parse: tolerant of irregular whitespace, exact about the first bad row."""
    images = np.empty((len(strings), NUM_PIXELS), dtype=np.uint8)
    for offset, text in enumerate(strings):
        line = first_line + offset
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where} line {line}: empty '{column}' field, "
                            f"expected {NUM_PIXELS} pixel values")
        tokens = text.split()
        for position, token in enumerate(tokens, start=1):
            if not token.isdigit() or int(token) > 255:
                raise DataError(f"{where} line {line}: pixel {position} is {token!r}, "
                                "expected an integer in 0-255")
        if len(tokens) != NUM_PIXELS:
            raise DataError(f"{where} line {line}: {len(tokens)} pixel values, expected {NUM_PIXELS}")
        images[offset] = np.array(tokens, dtype=np.int32)
    return images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def parse_pixel_strings(strings: Sequence[object], where: str, first_line: int,
                        column: str = "pixels") -> np.ndarray:
    """Parse N pixel strings into uint8 images (N, 48, 48), or raise DataError naming the row.

    `where` names the file and `first_line` is the file line of `strings[0]` for messages.
    """
    n = len(strings)
    if n == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    try:
        joined = " ".join(strings)  # type: ignore[arg-type]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            values = np.fromstring(joined, dtype=np.int32, sep=" ")
    except (TypeError, ValueError, DeprecationWarning):
        return _parse_rows(strings, where, first_line, column)
    # One token count per row: a row with one value too few next to a row with one too many
    # would otherwise pass the total count.
    counts = np.fromiter((s.count(" ") for s in strings), dtype=np.int64, count=n)  # type: ignore[union-attr]
    if (values.size != n * NUM_PIXELS or np.any(counts != NUM_PIXELS - 1)
            or values.min() < 0 or values.max() > 255):
        return _parse_rows(strings, where, first_line, column)
    return values.astype(np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE)
