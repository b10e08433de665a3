"""params.yaml sections are validated with messages that name the key."""
from __future__ import annotations

import re
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
    ({"consistency": -1.0}, r"train_cnn4.consistency: must be in \[0, 100\]"),
    ({"ema_decay": 1.0}, r"train_cnn4.ema_decay: must be in \[0, 1\)"),
    ({"class_weighting": "balanced"}, r"train_cnn4.class_weighting: 'balanced' is not one of none, inverse_sqrt"),
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


def test_fast_profile_differs_from_the_profile_in_cnn4_training_only() -> None:
    from fer.params import read_params

    fast, profile = read_params(ROOT / "params" / "fer2013_fast.yaml"), read_params(ROOT / "params" / "fer2013.yaml")
    assert fast["study"]["models"] == ["cnn4"]
    assert {k for k in fast if fast[k] != profile[k]} == {"study", "train_cnn4"}
    fast_model, study_model = dict(fast["train_cnn4"]["model"]), dict(profile["train_cnn4"]["model"])
    assert fast_model.pop("pool_before_norm") is True and study_model.pop("pool_before_norm") is False
    assert fast_model == study_model  # the widths and layers of the study's CNN4, in another block order
    assert fast["train_cnn4"]["consistency"] == 0 and fast["train_cnn4"]["precision"] == "auto"


@pytest.mark.slow
def test_fast_profile_runs_its_documented_stages_on_tiny_data(tmp_path: Path) -> None:
    """The profile's header command (`dvc repro --single-item prepare train_cnn4 evaluate`) with
    the profile as params.yaml, on tiny generated faces instead of FER2013 and 2 epochs."""
    import json

    import yaml

    from fer.params import EvaluateParams, TrackingParams, VisualizeParams
    from tests.conftest import make_tiny_project, run

    profile = ROOT / "params" / "fer2013_fast.yaml"
    for cls, section in ((TrackingParams, "tracking"), (PrepareParams, "prepare"), (TrainParams, "train_cnn4"),
                         (EvaluateParams, "evaluate"), (VisualizeParams, "visualize")):
        load_section(cls, section, profile)
    params = yaml.safe_load(profile.read_text())
    params["prepare"].update(source="synthetic", synthetic=tiny_params()["prepare"]["synthetic"])
    params["train_cnn4"]["epochs"] = 2
    project = make_tiny_project(tmp_path / "project", params)
    command = next(line for line in profile.read_text().splitlines() if "dvc repro" in line).strip("# ").split()
    assert command == ["dvc", "repro", "--single-item", "prepare", "train_cnn4", "evaluate"]
    output = run(command, project).stdout
    assert re.findall(r"Running stage '([^']+)'", output) == ["prepare", "train_cnn4", "evaluate"]
    history = (project / "results" / "history" / "cnn4.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs
    assert json.loads((project / "models" / "cnn4" / "run.json").read_text())["precision"] in ("fp32", "bf16")
    assert sorted(p.name for p in (project / "metrics" / "evaluate").iterdir()) == ["cnn4"]
    test = json.loads((project / "metrics" / "evaluate" / "cnn4" / "test.json").read_text())
    assert 0 <= test["accuracy"] <= 1 and 0 <= test["tta_accuracy"] <= 1  # the profile's test-time views


def test_overrides_replace_dotted_keys_and_reject_unknown_ones() -> None:
    from fer.params import with_overrides

    section = {"lr": 0.1, "augment": {"flip": True, "max_shift": 4}}
    changed = with_overrides(section, {"lr": 0.2, "augment.max_shift": 2})
    assert changed == {"lr": 0.2, "augment": {"flip": True, "max_shift": 2}}
    assert section["augment"]["max_shift"] == 4  # the input is not modified
    for bad in ("augment.shift", "model.dropout_fc", "lr.value"):
        with pytest.raises(ParamsError, match=rf"{bad}: is not a key of the section"):
            with_overrides(section, {bad: 1})


def test_fer2013_profile_is_the_publictest_winner_of_the_recorded_sweep() -> None:
    """Every job of the committed sweep grid is valid, and the profile's train sections are the
    jobs with the best PublicTest accuracy in the recorded results (selection never saw PrivateTest)."""
    import json

    import yaml

    from fer.params import build_section, read_params, with_overrides

    jobs = yaml.safe_load((ROOT / "benchmarks" / "fer2013_grid.yaml").read_text())["jobs"]
    profile = read_params(ROOT / "params" / "fer2013.yaml")
    sections = {job["name"]: with_overrides(profile[f"train_{job['model']}"], job["set"]) for job in jobs}
    for name, section in sections.items():
        build_section(TrainParams, section, name)
    results = ROOT / "benchmarks" / "results" / "fer2013_sweep_h200.jsonl"
    finals = [row for row in map(json.loads, results.read_text().splitlines()) if row.get("final")]
    model_of = {job["name"]: job["model"] for job in jobs}
    for model in ("cnn4", "cnn3"):
        best = max((row for row in finals if model_of[row["job"]] == model),
                   key=lambda row: max(row["val_acc"], row["val_acc_flip"], row["val_acc_flip_shift2"]))
        assert sections[best["job"]] == profile[f"train_{model}"], (model, best["job"])


def test_bad_visualize_value_is_named(tmp_path: Path) -> None:
    from fer.params import VisualizeParams

    write_params(tmp_path / "params.yaml", tiny_params(visualize={"sanity.expensive_images": 0}))
    with pytest.raises(ParamsError, match=r"visualize.sanity.expensive_images: must be at least 1"):
        load_section(VisualizeParams, "visualize", tmp_path / "params.yaml")
    write_params(tmp_path / "params.yaml", tiny_params(visualize={"methods.smoothgrad.samples": 0}))
    with pytest.raises(ParamsError, match=r"visualize.methods.smoothgrad.samples: must be at least 1"):
        load_section(VisualizeParams, "visualize", tmp_path / "params.yaml")
