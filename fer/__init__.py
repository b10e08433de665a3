"""fer-pipeline: a reproducible facial-expression-recognition study on FER2013-style data."""

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES: int = len(CLASS_NAMES)
IMAGE_SIZE: int = 48
NUM_PIXELS: int = IMAGE_SIZE * IMAGE_SIZE
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Conv widths of each architecture of the study; every conv block is conv3x3 -> ReLU -> maxpool2.
# Here rather than in fer.models so that validating params does not import torch models.
ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "cnn4": (32, 64, 128, 128),
    "cnn3": (64, 128, 512),
}


class FerError(Exception):
    """An expected failure (bad data, bad params, divergence): the stages print its message and
    exit 1 instead of showing a traceback."""
