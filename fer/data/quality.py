"""The data-quality report: class balance, blank images and exact duplicates within and across
splits (FER2013 has many; a duplicate of a test image in train leaks the test set)."""
from __future__ import annotations

from typing import Any

import numpy as np

from fer import CLASS_NAMES
from fer.data import Split

# A face image whose pixel standard deviation is below this is blank or nearly constant.
BLANK_STD = 2.0


def image_keys(images: np.ndarray) -> np.ndarray:
    """One hashable key per image (its raw bytes), for exact-duplicate detection."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    return flat.view(np.dtype((np.void, flat.shape[1]))).ravel()


def blank_mask(split: Split, chunk: int = 1024) -> np.ndarray:
    """Images whose pixel standard deviation is below BLANK_STD.

    Computed exactly in integers, std < t  <=>  n * sum(x^2) - sum(x)^2 < t^2 * n^2, a block of
    images at a time: no float64 copy of the whole split (660 MB for FER2013's 36k images).
    """
    flat = split.images.reshape(len(split), -1)
    n = flat.shape[1]
    blank = np.empty(len(flat), dtype=bool)
    for start in range(0, len(flat), chunk):
        block = flat[start:start + chunk].astype(np.int64)
        sums, squares = block.sum(axis=1), np.einsum("ij,ij->i", block, block)
        blank[start:start + chunk] = n * squares - sums * sums < BLANK_STD ** 2 * n * n
    return blank


def cross_split_duplicate_mask(train: Split, others: list[Split]) -> np.ndarray:
    """Train rows whose exact image also appears in any of the other splits."""
    if not others:
        return np.zeros(len(train), dtype=bool)
    other_keys = np.concatenate([image_keys(s.images) for s in others])
    return np.isin(image_keys(train.images), other_keys)


def image_ids(splits: dict[str, Split]) -> dict[str, np.ndarray]:
    """Per split, one integer per image, equal exactly when two images (of any splits) are equal:
    the byte keys are sorted once, then every comparison is between integers."""
    keys = np.concatenate([image_keys(split.images) for split in splits.values()])
    ids = np.unique(keys, return_inverse=True)[1].ravel()
    return dict(zip(splits, np.split(ids, np.cumsum([len(split) for split in splits.values()])[:-1])))


def quality_report(splits: dict[str, Split]) -> dict[str, Any]:
    report: dict[str, Any] = {"splits": {}}
    ids = image_ids(splits)
    for name, split in splits.items():
        counts = split.class_counts()
        present = [c for c in counts if c > 0]
        report["splits"][name] = {
            "rows": len(split),
            "class_counts": dict(zip(CLASS_NAMES, counts)),
            "imbalance_ratio": round(max(present) / min(present), 3) if present else None,
            "blank_images": int(blank_mask(split).sum()),
            "duplicates_within": int(len(split) - len(np.unique(ids[name]))),  # repeats of an earlier row
        }
    names = list(splits)
    report["duplicates_across"] = {
        f"{a}~{b}": int(np.isin(ids[a], ids[b]).sum())
        for i, a in enumerate(names) for b in names[i + 1:]
    }
    return report


def clean_train(splits: dict[str, Split], drop_blank: bool,
                drop_cross_split_duplicates: bool) -> tuple[Split, dict[str, int]]:
    """Train with blank images and/or images duplicated in other splits removed, as chosen."""
    train = splits["train"]
    drop = np.zeros(len(train), dtype=bool)
    dropped = {"blank": 0, "cross_split_duplicates": 0}
    if drop_blank:
        blank = blank_mask(train)
        dropped["blank"] = int(blank.sum())
        drop |= blank
    if drop_cross_split_duplicates:
        dup = cross_split_duplicate_mask(train, [s for n, s in splits.items() if n != "train"])
        dropped["cross_split_duplicates"] = int(dup.sum())
        drop |= dup
    return train.subset(~drop), dropped
