"""params.yaml sections are validated with messages that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from fer.params import ParamsError, PrepareParams, TrainParams, load_section
from tests.conftest import ROOT, tiny_params, write_params


def test_shipped_params_load() -> None:
    for section in ("train_cnn4", "train_cnn3"):
        assert load_section(TrainParams, section, ROOT / "params.yaml").epochs >= 1
    assert load_section(PrepareParams, "prepare", ROOT / "params.yaml").source == "synthetic"


@pytest.mark.parametrize("change, message", [
    ({"epoch": 3}, r"train_cnn4: unknown key\(s\) \['epoch'\]"),
    ({"lr": "fast"}, r"train_cnn4.lr: expected float, got 'fast'"),
    ({"optimizer": "adam"}, r"train_cnn4.optimizer: 'adam' is not one of sgd, adamw"),
    ({"epochs": 0}, r"train_cnn4.epochs: must be at least 1"),
])
def test_bad_values_are_named(tmp_path: Path, change: dict, message: str) -> None:
    write_params(tmp_path / "params.yaml", tiny_params(train_cnn4=change))
    with pytest.raises(ParamsError, match=message):
        load_section(TrainParams, "train_cnn4", tmp_path / "params.yaml")


def test_fer2013_profile_is_a_complete_params_file() -> None:
    from fer.params import EvaluateParams, TrackingParams, VisualizeParams

    profile = ROOT / "params" / "fer2013.yaml"
    for cls, section in ((TrackingParams, "tracking"), (PrepareParams, "prepare"), (TrainParams, "train_cnn4"),
                         (TrainParams, "train_cnn3"), (EvaluateParams, "evaluate"), (VisualizeParams, "visualize")):
        load_section(cls, section, profile)
    assert load_section(PrepareParams, "prepare", profile).source.endswith("fer2013.csv.gz")
