"""The `prepare` stage's logic: read or generate the data, clean train as asked, report quality."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fer import CLASS_NAMES
from fer.data import Split
from fer.data.quality import clean_train, quality_report
from fer.data.sources import read_source
from fer.params import PrepareParams

SYNTHETIC = "synthetic"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare(params: PrepareParams, root: Path) -> tuple[dict[str, Split], dict[str, Any]]:
    """Return the splits to save and the quality report (with the source's identity).

    A relative `params.source` is relative to `root`, the project directory.
    """
    if params.source == SYNTHETIC:
        # Imported here: the generator's scipy import would add about half a second to every
        # `prepare` of a real dataset.
        from fer.data.synthetic import generate_dataset

        s = params.synthetic
        splits = generate_dataset(s.n_train, s.n_val, s.n_test, s.seed, s.label_noise)
        source: dict[str, Any] = {"kind": SYNTHETIC}
    else:
        path = (root / params.source).resolve()
        splits = read_source(path, params.format, params.val_fraction, params.split_seed)
        source = {"kind": "file", "path": str(path)}
        if path.is_file():
            source["sha256"] = file_sha256(path)
    report = quality_report(splits)
    splits["train"], dropped = clean_train(splits, params.drop_blank, params.drop_cross_split_duplicates)
    report["dropped_from_train"] = dropped
    report["source"] = source
    return splits, report


def class_counts(splits: dict[str, Split]) -> dict[str, dict[str, int]]:
    return {name: dict(zip(CLASS_NAMES, split.class_counts())) | {"total": len(split)}
            for name, split in splits.items()}
