"""Read any supported source into train/val/test splits (plus `unlabelled` where given).

The format is detected from content (a directory, or a CSV header), not from the file name.
"""
from __future__ import annotations

from pathlib import Path

from fer.data import DataError, Split, stratified_holdout
from fer.data.csv_sources import HOMEWORK_TRAIN_COLUMNS, KAGGLE_COLUMNS, read_header, read_homework_csv, read_kaggle_csv
from fer.data.folders import read_image_folders


def detect_format(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        return "folders"
    header = set(read_header(path))
    if set(KAGGLE_COLUMNS) <= header:
        return "kaggle"
    if set(HOMEWORK_TRAIN_COLUMNS) <= header:
        return "homework"
    raise DataError(f"{path} line 1: unrecognised header {sorted(header)}; expected Kaggle "
                    f"({','.join(KAGGLE_COLUMNS)}) or homework ({','.join(HOMEWORK_TRAIN_COLUMNS)}) columns")


def _hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    held = stratified_holdout(split.labels, fraction, seed)
    return split.subset(~held), split.subset(held)


def read_source(path: Path, fmt: str, val_fraction: float, seed: int) -> dict[str, Split]:
    """Splits `train`, `val`, `test` (and `unlabelled` for a homework test.csv)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "kaggle":
        return read_kaggle_csv(path)
    if fmt == "homework":
        labelled = read_homework_csv(path, labelled=True)
        rest, test = _hold_out(labelled, val_fraction, seed)
        train, val = _hold_out(rest, val_fraction, seed + 1)
        splits = {"train": train, "val": val, "test": test}
        unlabelled_csv = path.with_name("test.csv")
        if unlabelled_csv.exists() and unlabelled_csv != path:
            splits["unlabelled"] = read_homework_csv(unlabelled_csv, labelled=False)
        return splits
    if fmt == "folders":
        splits = read_image_folders(path)
        if "val" not in splits:
            splits["train"], splits["val"] = _hold_out(splits["train"], val_fraction, seed)
        return splits
    raise DataError(f"unknown format '{fmt}'")
