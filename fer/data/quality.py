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


def blank_mask(split: Split) -> np.ndarray:
    return split.images.reshape(len(split), -1).std(axis=1) < BLANK_STD


def cross_split_duplicate_mask(train: Split, others: list[Split]) -> np.ndarray:
    """Train rows whose exact image also appears in any of the other splits."""
    if not others:
        return np.zeros(len(train), dtype=bool)
    other_keys = np.concatenate([image_keys(s.images) for s in others])
    return np.isin(image_keys(train.images), other_keys)


def _duplicates_within(split: Split) -> int:
    """Rows that repeat an earlier row's exact image."""
    return int(len(split) - len(np.unique(image_keys(split.images))))


def quality_report(splits: dict[str, Split]) -> dict[str, Any]:
    report: dict[str, Any] = {"splits": {}}
    for name, split in splits.items():
        counts = split.class_counts()
        present = [c for c in counts if c > 0]
        report["splits"][name] = {
            "rows": len(split),
            "class_counts": dict(zip(CLASS_NAMES, counts)),
            "imbalance_ratio": round(max(present) / min(present), 3) if present else None,
            "blank_images": int(blank_mask(split).sum()),
            "duplicates_within": _duplicates_within(split),
        }
    names = list(splits)
    report["duplicates_across"] = {
        f"{a}~{b}": int(np.isin(image_keys(splits[a].images), image_keys(splits[b].images)).sum())
        for i, a in enumerate(names) for b in names[i + 1:]
    }
    return report


def clean_train(splits: dict[str, Split], drop_blank: bool, drop_cross_split_duplicates: bool) -> tuple[Split, dict[str, int]]:
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
