"""Reader for image folders: `<root>/<split>/<class_name>/*.png|*.jpg`, any size or mode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer import CLASS_NAMES, IMAGE_SIZE
from fer.data import DataError, Split

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            gray = image.convert("L")
            if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
                gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path}: not a readable image ({error.__class__.__name__}: {error})") from None


def _read_split_folder(folder: Path) -> Split:
    class_ids = {name: index for index, name in enumerate(CLASS_NAMES)}
    images, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = class_ids.get(class_dir.name.lower())
        if label is None:
            raise DataError(f"{class_dir}: unknown class folder '{class_dir.name}', "
                            f"expected one of {', '.join(CLASS_NAMES)}")
        for file in sorted(p for p in class_dir.iterdir() if p.is_file()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{file}: not an image file, expected one of {', '.join(IMAGE_SUFFIXES)}")
            images.append(_load_image(file))
            labels.append(label)
    if not images:
        raise DataError(f"{folder}: split folder holds no images")
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64), np.arange(len(images), dtype=np.int64))


def read_image_folders(root: Path) -> dict[str, Split]:
    """All split folders present under `root` (train and test required, val optional)."""
    splits: dict[str, Split] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = SPLIT_FOLDERS.get(folder.name.lower())
        if name is None:
            raise DataError(f"{folder}: unknown split folder '{folder.name}', "
                            f"expected one of {', '.join(SPLIT_FOLDERS)}")
        if name in splits:
            raise DataError(f"{folder}: a second folder for the {name} split")
        splits[name] = _read_split_folder(folder)
    for required in ("train", "test"):
        if required not in splits:
            raise DataError(f"{root}: no '{required}' split folder, expected {root}/{required}/<class>/")
    return splits
