"""The pretrained model shipped in the package: CNN4 trained on FER2013 for real photos
(docs/model_card.md), used by `predict` and the photo model unless another model is named; and
the one-line description of what any loaded model was trained on."""
from __future__ import annotations

from pathlib import Path

from fer.models import Network, load_model

DEFAULT_MODEL = Path(__file__).parent / "weights" / "cnn4_fer2013.pt"
SYNTHETIC = "synthetic"


def describe(model: Network, name: str) -> str:
    """One line naming the model and the data it was trained on, as its checkpoint records them."""
    data = model.trained_on
    arch = model.params.arch
    if not data:
        return f"model {name} ({arch}): its checkpoint does not record its training data"
    if data["source_kind"] == SYNTHETIC:
        where = "the synthetic default faces"
    else:
        where = data["source_file"] + (f" (sha256 {data['source_sha256'][:12]})" if "source_sha256" in data else "")
    return f"model {name} ({arch}), trained on {where}; prepared data sha256 {data['prepared_sha256'][:12]}"


def trained_on_synthetic(model: Network) -> bool:
    return bool(model.trained_on) and model.trained_on["source_kind"] == SYNTHETIC


def photo_checkpoint(checkpoint: Path) -> Path | None:
    """The checkpoint a photo model of `checkpoint`'s network should bundle: the checkpoint itself
    when it was trained on real data; for one trained on the synthetic default (whose faces say
    nothing about photos), the shipped FER2013 weights of the same architecture, or None if none
    ship."""
    model = load_model(checkpoint)
    if not trained_on_synthetic(model):
        return checkpoint
    return DEFAULT_MODEL if load_model(DEFAULT_MODEL).params.arch == model.params.arch else None
