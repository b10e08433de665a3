"""Datasets as compact arrays: uint8 images (N, 48, 48), int64 labels, per split.

Every reader returns `Split`s; `prepare` stores them as `<split>.npz` so that training reads
a few megabytes instead of re-parsing text.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from fer import IMAGE_SIZE, NUM_CLASSES, SPLITS, FerError
from fer.io import write_npz

UNLABELLED = -1


class DataError(FerError, ValueError):
    """A data source is missing or malformed; the message names the file, the row and the problem."""


@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # int64 (N,), UNLABELLED where the source has no label
    source_index: np.ndarray  # int64 (N,): row (or file) number in the source, for traceability
    masks: np.ndarray | None = None  # uint8 (N, 48, 48): expression-feature ground truth (synthetic)

    def __post_init__(self) -> None:
        n = len(self.images)
        assert self.images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE) and self.images.dtype == np.uint8
        assert len(self.labels) == n and len(self.source_index) == n
        assert self.masks is None or self.masks.shape == self.images.shape

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, keep: np.ndarray) -> Split:
        return Split(self.images[keep], self.labels[keep], self.source_index[keep],
                     None if self.masks is None else self.masks[keep])

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels[self.labels >= 0], minlength=NUM_CLASSES).tolist()


def save_split(path: Path, split: Split) -> None:
    arrays = {"images": split.images, "labels": split.labels, "source_index": split.source_index}
    if split.masks is not None:
        arrays["masks"] = split.masks
    write_npz(path, **arrays)


def _check_prepared(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The layout `save_split` writes, or DataError naming the array that differs."""
    images = arrays["images"]
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{path}: 'images' is {images.dtype} {images.shape}, "
                        f"expected uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE})")
    for name in ("labels", "source_index"):
        if arrays[name].dtype.kind not in "iu" or arrays[name].shape != (len(images),):
            raise DataError(f"{path}: '{name}' is {arrays[name].dtype} {arrays[name].shape}, "
                            f"expected {len(images)} integers")
    if len(images) and not ((arrays["labels"] >= UNLABELLED) & (arrays["labels"] < NUM_CLASSES)).all():
        raise DataError(f"{path}: 'labels' outside {UNLABELLED}-{NUM_CLASSES - 1}")
    if "masks" in arrays and arrays["masks"].shape != images.shape:
        raise DataError(f"{path}: 'masks' is {arrays['masks'].shape}, expected {images.shape}")


def load_split(path: str | Path) -> Split:
    """A split written by `prepare`, or DataError (one line naming the file) when it is missing,
    truncated, corrupt or not laid out as `save_split` writes it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared split not found (run the `prepare` stage first)")
    try:
        loaded = np.load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: not a readable prepared split ({error.__class__.__name__}: {error}); "
                        "rerun the `prepare` stage") from None
    missing = [name for name in ("images", "labels", "source_index") if name not in arrays]
    if missing:
        raise DataError(f"{path}: no array named {', '.join(missing)}; rerun the `prepare` stage")
    _check_prepared(path, arrays)
    return Split(arrays["images"], arrays["labels"].astype(np.int64), arrays["source_index"].astype(np.int64),
                 arrays.get("masks"))


def load_prepared(directory: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, Split]:
    return {name: load_split(Path(directory) / f"{name}.npz") for name in splits}


def training_data(directory: str | Path, splits: tuple[str, ...] = ("train", "val")) -> dict[str, str]:
    """What a model is trained on, for its checkpoint: the source's kind and file name (and the
    source file's sha256 when `prepare` read a file) from `quality.json`, and one sha256 over the
    prepared `splits` as stored, so that a checkpoint names its data without the data beside it."""
    directory = Path(directory)
    quality = directory / "quality.json"
    try:
        source = json.loads(quality.read_text())["source"]
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{quality}: no readable data source ({error.__class__.__name__}); "
                        "rerun the `prepare` stage") from None
    digest = hashlib.sha256()
    for name in splits:
        digest.update((directory / f"{name}.npz").read_bytes())
    identity = {"source_kind": str(source["kind"]),
                "source_file": Path(source["path"]).name if "path" in source else source["kind"],
                "prepared_sha256": digest.hexdigest(), "prepared_splits": ",".join(splits)}
    if "sha256" in source:
        identity["source_sha256"] = source["sha256"]
    return identity


@dataclasses.dataclass(frozen=True)
class DataRef:
    """One prepared split as a tracking store names it: `name` (source file and split), `digest`
    (the md5 of the split's file, the hash DVC records for it in `dvc.lock`'s directory listing),
    and the original source (its path and sha256 when `prepare` read a file)."""

    split: str
    name: str
    digest: str
    source_kind: str
    source: str
    source_sha256: str | None


def data_ref(directory: str | Path, split: str) -> DataRef:
    """The DataRef of `<directory>/<split>.npz`, its source read from `quality.json`."""
    directory = Path(directory)
    identity = training_data(directory, (split,))
    source = json.loads((directory / "quality.json").read_text())["source"]
    origin = str(source.get("path", "synthetic faces generated by fer.data.synthetic"))
    return DataRef(split=split, name=f"{identity['source_file']}:{split}",
                   digest=hashlib.md5((directory / f"{split}.npz").read_bytes()).hexdigest(),
                   source_kind=identity["source_kind"], source=origin,
                   source_sha256=identity.get("source_sha256"))


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask selecting a seeded, per-class `fraction` of the rows (at least one per class
    present with two or more rows)."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        n_take = int(round(fraction * len(rows)))
        if len(rows) >= 2:
            n_take = min(max(n_take, 1), len(rows) - 1)
        chosen[rng.choice(rows, size=n_take, replace=False)] = True
    return chosen
