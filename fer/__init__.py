"""fer-pipeline: a reproducible facial-expression-recognition study on FER2013-style data."""

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES: int = len(CLASS_NAMES)
IMAGE_SIZE: int = 48
NUM_PIXELS: int = IMAGE_SIZE * IMAGE_SIZE
SPLITS: tuple[str, ...] = ("train", "val", "test")


class FerError(Exception):
    """An expected failure (bad data, bad params, divergence): the stages print its message and
    exit 1 instead of showing a traceback."""
