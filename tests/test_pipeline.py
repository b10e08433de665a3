"""End to end: the real `dvc repro` on tiny data in a temporary git + DVC repository, checked
through the files, DVC itself and the MLflow client."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import run, tiny_params, write_params

pytestmark = pytest.mark.slow


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_pipeline_end_to_end(tiny_project: Path) -> None:
    first = run(["dvc", "repro"], tiny_project)
    assert stages_run(first.stdout) == ["prepare", "train_cnn4", "train_cnn3", "evaluate", "visualize", "report"]
    for path in ("data/prepared/train.npz", "models/cnn4/model.pt", "models/cnn3/history.csv",
                 "metrics/cnn4/test.json", "metrics/cnn3/val.json", "metrics/saliency/gradient.json",
                 "results/evaluate/cnn4/confusion_val.png",
                 "results/visualize/cnn3/saliency.png", "results/visualize/cnn4/features_1_0/atlas_01.png",
                 "results/visualize/cnn4/features_3_0/atlas_08.png", "results/visualize/cnn4/feature_maps.png",
                 "dvc.lock"):
        assert (tiny_project / path).is_file(), path

    # MLflow: one run per model in the experiment of params.yaml, per-epoch metrics, artifacts.
    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tiny_params()["tracking"]["experiment"])
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"cnn4", "cnn3", "prepare"} <= set(runs)
    epochs = tiny_params()["train_cnn4"]["epochs"]
    for name in ("cnn4", "cnn3"):
        run_info = runs[name]
        assert run_info.data.params["lr"] == str(tiny_params()[f"train_{name}"]["lr"])
        assert run_info.data.tags["dvc_stage"] == f"train_{name}"
        for metric in ("train_loss", "train_acc", "val_loss", "val_acc"):
            steps = [m.step for m in client.get_metric_history(run_info.info.run_id, metric)]
            assert sorted(steps) == list(range(1, epochs + 1)), (name, metric, steps)
        assert "val_accuracy" in run_info.data.metrics and "test_macro_f1" in run_info.data.metrics
        evaluate = {Path(a.path).name for a in client.list_artifacts(run_info.info.run_id, "evaluate")}
        assert {"confusion_train.png", "confusion_val.png", "analysis.md", "metrics.json"} <= evaluate
    visual_cnn3 = {Path(a.path).name for a in client.list_artifacts(runs["cnn3"].info.run_id, "visualize")}
    assert {"saliency.png", "saliency.npz", "sanity.json"} <= visual_cnn3
    for layer in ("features_1_0", "features_3_0"):  # the two layers named in tiny params' filters_layers
        atlas = {Path(a.path).name for a in client.list_artifacts(runs["cnn4"].info.run_id, f"visualize/{layer}")}
        assert {"filters.png", "filters.npz", "atlas_01.png", "activation_histogram.png"} <= atlas, layer
    sanity = json.loads((tiny_project / "results" / "visualize" / "cnn3" / "sanity.json").read_text())
    assert sanity["occlusion"]["images"] == min(tiny_params()["visualize"]["occlusion_images"], sanity["images"])

    # The registered model predicts through MLflow's generic interface on any batch size.
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{tiny_params()['train_cnn4']['registered_model']}/1")
    assert pyfunc.predict(np.random.default_rng(0).random((3, 1, 48, 48), dtype=np.float32)).shape == (3, 7)
    # Trained on synthetic faces: the checkpoint says so, and the photo model of cnn4 (registered by
    # the report stage in cnn4's run) bundles the shipped FER2013 weights; no cnn3 weights ship.
    import torch

    from fer.pretrained import DEFAULT_MODEL

    data = torch.load(tiny_project / "models" / "cnn4" / "model.pt", weights_only=True)["data"]
    assert data["source_kind"] == "synthetic" and len(data["prepared_sha256"]) == 64
    registered = tiny_params()["train_cnn4"]["registered_model"]
    [version] = client.search_model_versions(f"name = '{registered}-photo'")
    assert version.run_id == runs["cnn4"].info.run_id
    bundled = Path(mlflow.artifacts.download_artifacts(f"models:/{registered}-photo/{version.version}"))
    assert (bundled / "artifacts" / "model.pt").read_bytes() == DEFAULT_MODEL.read_bytes()
    assert not client.search_registered_models(f"name = '{tiny_params()['train_cnn3']['registered_model']}-photo'")

    assert_report_matches_metrics(tiny_project)

    # A second repro is a no-op.
    again = run(["dvc", "repro"], tiny_project)
    assert stages_run(again.stdout) == []

    # Commit, change one CNN3 training param: only train_cnn3 and what is downstream reruns,
    # and DVC reports the params and metrics change against the commit.
    run(["git", "add", "-A"], tiny_project)
    run(["git", "commit", "-qm", "baseline"], tiny_project)
    report_before = (tiny_project / "reports" / "report.md").read_text()
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["train_cnn3"]["lr"] = 0.0005
    write_params(tiny_project / "params.yaml", params)
    changed = run(["dvc", "repro"], tiny_project)
    assert stages_run(changed.stdout) == ["train_cnn3", "evaluate", "visualize", "report"]
    assert (tiny_project / "reports" / "report.md").read_text() != report_before
    assert_report_matches_metrics(tiny_project)
    assert "train_cnn3.lr" in run(["dvc", "params", "diff"], tiny_project).stdout
    assert "metrics/cnn3/val.json" in run(["dvc", "metrics", "diff"], tiny_project).stdout
    runs_after = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "cnn3"]
    assert len(runs_after) == 2


def assert_report_matches_metrics(project: Path) -> None:
    """Every section present, every image embedded, no external URL, numbers = metrics files."""
    import json

    from fer.report import SECTIONS, SUMMARY_METRICS

    page = (project / "reports" / "report.html").read_text()
    markdown_text = (project / "reports" / "report.md").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page and f"## {section}" in markdown_text
    images = re.findall(r"<img[^>]*>", page)
    assert len(images) == markdown_text.count("![") >= 15
    assert all('src="data:image/png;base64,' in tag for tag in images)
    assert not re.search(r"https?://", page)
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<math" in page and "$$" not in page
    for model in ("cnn4", "cnn3"):
        metrics = json.loads((project / "results" / "evaluate" / model / "metrics.json").read_text())
        for split in ("train", "val", "test"):
            row = f"| {split} | " + " | ".join(f"{metrics[split][m]:.4f}" for m in SUMMARY_METRICS) + " |"
            assert row in markdown_text, row
            assert f"<td>{metrics[split]['accuracy']:.4f}</td>" in page


def test_prepare_missing_source_fails_cleanly(tiny_project: Path) -> None:
    params = tiny_params(prepare={"source": "no/such/fer2013.csv"})
    write_params(tiny_project / "params.yaml", params)
    result = run(["python", "-m", "stages.prepare"], tiny_project, check=False)
    assert result.returncode == 1
    assert "fer2013.csv: file not found" in result.stderr
    assert not (tiny_project / "data" / "prepared").exists()
