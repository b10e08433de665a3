"""Fast, strict parsing of space-separated 48x48 pixel strings (the FER2013 CSV encoding).

The strings of a chunk arrive as one UTF-8 byte buffer with row offsets (Arrow's string layout).
The fast path decodes every number of the chunk at once with whole-array numpy operations (a
pixel is at most three ASCII digits); only when a byte is not a digit or a space, a number is
longer than three digits or above 255, or a row has the wrong count does the slow path walk the
rows one by one: it names the exact bad row and value.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fer import IMAGE_SIZE, NUM_PIXELS
from fer.data import DataError

_ZERO, _SPACE = ord("0"), ord(" ")


def _parse_rows(strings: Sequence[str], where: str, first_line: int, column: str) -> np.ndarray:
    """Row-by-row parse: tolerant of irregular whitespace, exact about the first bad row."""
    images = np.empty((len(strings), NUM_PIXELS), dtype=np.uint8)
    for offset, text in enumerate(strings):
        line = first_line + offset
        if not text.strip():
            raise DataError(f"{where} line {line}: empty '{column}' field, "
                            f"expected {NUM_PIXELS} pixel values")
        tokens = text.split()
        for position, token in enumerate(tokens, start=1):
            # isdigit alone accepts '²' or '٣', which int() then rejects or reads as another digit.
            if not (token.isascii() and token.isdigit()) or int(token) > 255:
                raise DataError(f"{where} line {line}: pixel {position} is {token!r}, "
                                "expected an integer in 0-255")
        if len(tokens) != NUM_PIXELS:
            raise DataError(f"{where} line {line}: {len(tokens)} pixel values, expected {NUM_PIXELS}")
        images[offset] = np.array(tokens, dtype=np.int32)
    return images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def _parse_all_at_once(text: np.ndarray, starts: np.ndarray) -> np.ndarray | None:
    """Pixels of well-formed rows (text: uint8 bytes, starts: each row's first byte, rows
    non-empty), or None when anything is unusual and the slow path must look row by row."""
    digit = text - np.uint8(_ZERO)  # wraps around for bytes below '0'
    is_digit = digit < 10
    if np.count_nonzero(is_digit) + np.count_nonzero(text == _SPACE) != len(text):
        return None
    # continues[i]: byte i is a digit after another digit of the same number (never across rows).
    continues = np.zeros(len(text), dtype=bool)
    np.logical_and(is_digit[1:], is_digit[:-1], out=continues[1:])
    continues[starts] = False
    third = continues[2:] & continues[1:-1]  # byte i + 2 is the third digit of its number
    if np.any(third[1:] & continues[1:-2]):  # a fourth digit: leave the message to the slow path
        return None
    value = digit.astype(np.uint16)  # the number ending at each byte, up to three digits back
    value[1:] += (digit[:-1] * continues[1:]) * np.uint16(10)
    value[2:] += (digit[:-2] * third).astype(np.uint16) * np.uint16(100)
    ends = is_digit.copy()  # the last digit of each number
    ends[:-1] &= ~continues[1:]
    # (Summing bytes and np.compress: several times faster than summing bools and value[ends].)
    counts = np.add.reduceat(ends.view(np.uint8), starts, dtype=np.int32)
    values = np.compress(ends, value)
    if np.any(counts != NUM_PIXELS) or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(len(starts), IMAGE_SIZE, IMAGE_SIZE)


def parse_pixel_buffer(text: np.ndarray, offsets: np.ndarray, where: str, first_line: int,
                       column: str = "pixels") -> np.ndarray:
    """Parse N pixel strings into uint8 images (N, 48, 48), or raise DataError naming the row.

    Row i is the UTF-8 bytes text[offsets[i]:offsets[i + 1]] (text uint8, offsets N + 1 ints).
    `where` names the file and `first_line` is the file line of row 0 for messages.
    """
    n = len(offsets) - 1
    if n == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    offsets = np.asarray(offsets, dtype=np.int64)
    images = None
    if np.all(np.diff(offsets) > 0):
        images = _parse_all_at_once(text[offsets[0]:offsets[-1]], offsets[:-1] - offsets[0])
    if images is None:
        strings = [text[a:b].tobytes().decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
        images = _parse_rows(strings, where, first_line, column)
    return images
