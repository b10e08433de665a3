"""End to end: the real `dvc repro` on tiny data in a temporary git + DVC repository, checked
through the files, DVC itself and the MLflow client. One pipeline run is shared by the tests of
this module; the tests that change the project come last, in file order."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import (
    env_with_venv,
    free_port,
    make_tiny_project,
    run,
    stop_process_groups,
    tiny_params,
    write_params,
)

pytestmark = pytest.mark.slow

PREFIX = tiny_params()["tracking"]["registered_model_prefix"]

# A researcher's additions, made in the shared run's project before anything runs: an architecture
# (its class, its params section, one stage block, its name in the model list) and an attribution
# method (its function and its options section). Nothing else in the project is touched.
TOY_ARCHITECTURE = '''

@dataclasses.dataclass(frozen=True)
class TinyOptions:
    width: int

    def validate(self, where: str) -> None:
        check(self.width >= 1, f"{where}.width", "must be at least 1")


@register("tiny")
class Tiny(Network):
    """One strided 5x5 conv, a 4x4 average pool and a linear read-out."""

    Options = TinyOptions

    def __init__(self, params: ModelParams) -> None:
        super().__init__(params)
        width = params.options.width
        self.conv, self.relu = nn.Conv2d(1, width, 5, stride=2, padding=2), nn.ReLU()
        self.pool, self.head = nn.AdaptiveAvgPool2d(4), nn.Linear(width * 16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.conv(self.standardize(x)))).flatten(1))

    def activations(self) -> dict[str, nn.Module]:
        return {"conv": self.relu}

    def describe(self) -> str:
        return f"one 5x5 conv ({self.params.options.width} channels, stride 2), 4x4 average pool, FC"
'''
TOY_METHOD = '''

@register_method("input_times_gradient")
def input_times_gradient(model: Network, x: torch.Tensor, target: list[int], options: NoOptions) -> torch.Tensor:
    """|input x gradient|."""
    return (x * Saliency(model).attribute(x, target=target)).abs()
'''
TOY = "tiny"
TOY_METHOD_NAME = "input_times_gradient"


def extend_project(project: Path) -> str:
    """Add the toy architecture and attribution method; returns `git diff --stat` of the change."""
    with open(project / "fer" / "models.py", "a") as handle:
        handle.write(TOY_ARCHITECTURE)
    with open(project / "fer" / "saliency.py", "a") as handle:
        handle.write(TOY_METHOD)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["study"]["models"].append(TOY)
    params[f"train_{TOY}"] = params["train_cnn4"] | {"model": {"arch": TOY, "width": 4}}
    params["visualize"]["methods"][TOY_METHOD_NAME] = {}
    write_params(project / "params.yaml", params)
    stages = (project / "dvc.yaml").read_text()
    block = re.search(r"\n  train_cnn3:\n.*?\n\n", stages, re.S).group(0)
    stages = stages.replace(block, block + block.replace("cnn3", TOY).lstrip("\n"))
    runs = "  - models/cnn3/run.json\n"  # its run column in `dvc exp show`
    (project / "dvc.yaml").write_text(stages.replace(runs, runs + runs.replace("cnn3", TOY)))
    return run(["git", "diff", "--stat"], project).stdout


MODELS = (*tiny_params()["study"]["models"], TOY)


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The code committed, then `dvc repro` (system metrics sampled every second, so that the
    short trainings get some), then the outputs committed as the baseline."""
    project = make_tiny_project(tmp_path_factory.mktemp("pipeline") / "project")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "the project as shipped"], project)
    extension = extend_project(project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "code"], project)
    code_commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    first = run(["dvc", "repro"], project, env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline"], project)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tiny_params()["tracking"]["experiment"])
    assert experiment is not None
    return {"project": project, "output": first.stdout, "code_commit": code_commit, "client": client,
            "experiment": experiment, "extension": extension}


def runs_by_name(pipeline: dict, experiment_id: str | None = None) -> dict:
    """The newest run of each name (search_runs lists the newest first)."""
    found = pipeline["client"].search_runs([experiment_id or pipeline["experiment"].experiment_id])
    return {r.info.run_name: r for r in reversed(found)}


def prepared_md5s(project: Path) -> dict[str, str]:
    """The md5 DVC records for each file of data/prepared (its directory listing in the cache)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    listing_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    listing = project / ".dvc" / "cache" / "files" / "md5" / listing_md5[:2] / listing_md5[2:]
    return {entry["relpath"]: entry["md5"] for entry in json.loads(listing.read_text())}


def test_every_stage_runs_and_writes_its_outputs(pipeline: dict) -> None:
    project = pipeline["project"]
    ran = stages_run(pipeline["output"])
    assert ran[0] == "prepare" and ran[-4:] == ["evaluate", "visualize", "photos", "report"]
    assert sorted(ran[1:-4]) == sorted(f"train_{m}" for m in MODELS)
    last = {"cnn4": "features_3_0", "cnn3": "features_2_0", "resnet9": "layer3_4_conv2", TOY: "conv"}
    for model in MODELS:
        for path in (f"models/{model}/model.pt", f"results/history/{model}.csv", f"metrics/evaluate/{model}/test.json",
                     f"metrics/saliency/{model}/gradient.json", f"metrics/saliency/{model}/occlusion.json",
                     f"results/confusion/{model}_val.csv", f"results/evaluate/{model}/confusion_val.png",
                     f"results/visualize/{model}/saliency.png", f"results/visualize/{model}/{last[model]}/atlas_01.png",
                     f"results/visualize/{model}/feature_maps.png", f"reports/history/{model}.png"):
            assert (project / path).is_file(), path
        sanity = json.loads((project / "results" / "visualize" / model / "sanity.json").read_text())
        assert sanity["methods"]["occlusion"]["images"] == tiny_params()["visualize"]["sanity"]["expensive_images"]
        assert sanity["methods"]["gradient"]["images"] == tiny_params()["visualize"]["sanity"]["images"]
    assert (project / "dvc.lock").is_file() and (project / "data/prepared/train.npz").is_file()
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    files = next(iter(shown.values()))["data"]
    assert {f"metrics/saliency/{m}/{method}.json" for m in MODELS for method in ("gradient", "edges")} <= set(files)
    assert_report_matches_metrics(project)
    assert stages_run(run(["dvc", "repro"], project).stdout) == []  # a second repro is a no-op


def test_training_runs_record_their_data_params_and_provenance(pipeline: dict) -> None:
    client, project = pipeline["client"], pipeline["project"]
    runs = runs_by_name(pipeline)
    md5 = prepared_md5s(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    epochs = tiny_params()["train_cnn4"]["epochs"]
    for name in MODELS:
        run_info = client.get_run(runs[name].info.run_id)
        assert run_info.info.status == "FINISHED"
        assert run_info.data.params["lr"] == str(params[f"train_{name}"]["lr"])
        assert "registered_model_prefix" not in json.dumps(run_info.data.params)
        tags = run_info.data.tags
        assert tags["dvc_stage"] == f"train_{name}" and tags["model"] == name
        assert tags["mlflow.user"] not in ("", "unknown") and tags["mlflow.source.name"].endswith("stages/train.py")
        assert tags["mlflow.source.git.commit"] == tags["git_commit"] == pipeline["code_commit"]
        for metric in ("train_loss", "train_acc", "val_loss", "val_acc"):
            steps = [m.step for m in client.get_metric_history(run_info.info.run_id, metric)]
            assert sorted(steps) == list(range(1, epochs + 1)), (name, metric, steps)
        assert "system/cpu_utilization_percentage" in run_info.data.metrics
        assert "test_accuracy" not in run_info.data.metrics  # evaluation has runs of its own
        # The training and validation splits as dataset inputs: digest = DVC's md5 of the file.
        inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                  for i in run_info.inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation"}
        for context, split in (("training", "train"), ("validation", "val")):
            assert inputs[context].name == f"synthetic:{split}"
            assert inputs[context].digest == md5[f"{split}.npz"]
        recorded = json.loads((project / "models" / name / "run.json").read_text())
        assert recorded["run_id"] == run_info.info.run_id
        logged = client.get_logged_model(recorded["model_id"])
        assert logged.source_run_id == run_info.info.run_id
    data = torch.load(project / "models" / "cnn4" / "model.pt", weights_only=True)["data"]
    assert data["source_kind"] == "synthetic" and len(data["prepared_sha256"]) == 64


def test_evaluation_and_visualisation_log_into_runs_of_their_own(pipeline: dict) -> None:
    client, project = pipeline["client"], pipeline["project"]
    runs = runs_by_name(pipeline)
    for name in MODELS:
        training = runs[name]
        model_id = json.loads((project / "models" / name / "run.json").read_text())["model_id"]
        evaluate = client.get_run(runs[f"evaluate-{name}"].info.run_id)
        assert evaluate.data.tags["mlflow.parentRunId"] == training.info.run_id
        assert evaluate.data.params == {k: str(v) for k, v in tiny_params()["evaluate"].items()}
        assert [m.model_id for m in evaluate.inputs.model_inputs] == [model_id]
        names = {d.dataset.name for d in evaluate.inputs.dataset_inputs}
        assert names == {f"synthetic:{s}" for s in ("train", "val", "test")}
        assert "val_accuracy" in evaluate.data.metrics and "test_macro_f1" in evaluate.data.metrics
        artifacts = {Path(a.path).name for a in client.list_artifacts(evaluate.info.run_id, "evaluate")}
        assert {"confusion_train.png", "confusion_val.png", "analysis.md", "metrics.json"} <= artifacts
        # The metrics are the model's, each tied to the split it measures.
        on_model = {(m.key, m.dataset_name): m.value for m in client.get_logged_model(model_id).metrics}
        expected = json.loads((project / "results" / "evaluate" / name / "metrics.json").read_text())
        assert on_model[("test_accuracy", "synthetic:test")] == pytest.approx(expected["test"]["accuracy"])
        assert ("val_accuracy", "synthetic:val") in on_model
    for name in MODELS:
        visual = runs[f"visualize-{name}"]
        assert visual.data.tags["mlflow.parentRunId"] == runs[name].info.run_id
        assert visual.data.params["methods.integrated_gradients.steps"] == str(
            tiny_params()["visualize"]["methods"]["integrated_gradients"]["steps"])
        assert {Path(a.path).name for a in client.list_artifacts(visual.info.run_id, "visualize")} >= {
            "saliency.png", "saliency.npz", "sanity.json", "feature_maps.png"}
        assert "saliency_gradient.deletion_auc" in visual.data.metrics
    atlas = {Path(a.path).name
             for a in client.list_artifacts(runs["visualize-cnn4"].info.run_id, "visualize/features_3_0")}
    assert {"filters.png", "filters.npz", "atlas_01.png", "activation_histogram.png"} <= atlas
    report = runs["report"]
    assert {Path(a.path).name for a in client.list_artifacts(report.info.run_id, "report")} >= {"report.html",
                                                                                                "report.md"}


def test_registry_names_the_champions(pipeline: dict) -> None:
    """`@champion` resolves for each tensor model and for cnn4's photo model, which bundles the
    shipped FER2013 weights (the models were trained on synthetic faces); no cnn3 weights ship."""
    import mlflow

    from fer.pretrained import DEFAULT_MODEL

    client, project = pipeline["client"], pipeline["project"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{PREFIX}cnn4@champion")
    assert pyfunc.predict(np.random.default_rng(0).random((3, 1, 48, 48), dtype=np.float32)).shape == (3, 7)
    for name in MODELS:
        champion = client.get_model_version_by_alias(f"{PREFIX}{name}", "champion")
        recorded = json.loads((project / "models" / name / "run.json").read_text())
        assert champion.run_id == recorded["run_id"]
        checkpoint = (project / "models" / name / "model.pt").read_bytes()
        assert champion.tags["checkpoint_sha256"] == hashlib.sha256(checkpoint).hexdigest()
    photo = client.get_model_version_by_alias(f"{PREFIX}cnn4-photo", "champion")
    assert photo.run_id == runs_by_name(pipeline)["photos"].info.run_id
    bundled = Path(mlflow.artifacts.download_artifacts(f"models:/{PREFIX}cnn4-photo@champion"))
    assert (bundled / "artifacts" / "model.pt").read_bytes() == DEFAULT_MODEL.read_bytes()
    assert (bundled / "photo_pyfunc.py").is_file() and not list(bundled.glob("*.pkl"))  # models from code
    assert not client.search_registered_models(f"name = '{PREFIX}cnn3-photo'")


def test_dvc_exp_show_names_each_models_run(pipeline: dict) -> None:
    shown = run(["dvc", "exp", "show", "--json"], pipeline["project"]).stdout
    for name in MODELS:
        run_id = json.loads((pipeline["project"] / "models" / name / "run.json").read_text())["run_id"]
        assert run_id in shown, name
    table = run(["dvc", "exp", "show", "--no-pager", "--md"], pipeline["project"]).stdout
    assert "run_id" in table


def predict(project: Path, out: str, *options: str) -> list[dict]:
    """`python -m fer.predict` in the project (its fer/, its MLflow store) on one test face."""
    import cv2

    face = project / "face.png"
    cv2.imwrite(str(face), np.load(project / "data" / "prepared" / "test.npz")["images"][0])
    run(["python", "-m", "fer.predict", str(face), "--no-detect", "--out", out, *options], project,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    return [json.loads(line) for line in (project / out / "predictions.jsonl").read_text().splitlines()]


def test_an_added_architecture_goes_through_the_whole_study(pipeline: dict) -> None:
    """The toy network, added by its class, its params section, one stage block and its name in
    study.models, is trained, evaluated, explained (saliency with sanity numbers, filters),
    reported, registered and usable by `predict`."""
    project, client = pipeline["project"], pipeline["client"]
    changed = sorted(line.split("|")[0].strip() for line in pipeline["extension"].splitlines() if "|" in line)
    assert changed == ["dvc.yaml", "fer/models.py", "fer/saliency.py", "params.yaml"], pipeline["extension"]
    metrics = json.loads((project / "metrics" / "evaluate" / TOY / "test.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1
    sanity = json.loads((project / "results" / "visualize" / TOY / "sanity.json").read_text())
    assert set(sanity["methods"]) >= {"gradient", "grad_cam", "occlusion", "edges"}
    assert (project / "results" / "visualize" / TOY / "conv" / "atlas_01.png").is_file()
    report = (project / "reports" / "report.md").read_text()
    assert f"**{TOY}**: one 5x5 conv (4 channels, stride 2)" in report and f"### {TOY}, layer `conv`" in report
    champion = client.get_model_version_by_alias(f"{PREFIX}{TOY}", "champion")
    assert champion.run_id == json.loads((project / "models" / TOY / "run.json").read_text())["run_id"]
    served = predict(project, "by-uri", "--model", f"models:/{PREFIX}{TOY}@champion")
    from_file = predict(project, "by-file", "--model", f"models/{TOY}/model.pt")
    assert served[0]["top"] == from_file[0]["top"] and served[0]["probability"] == from_file[0]["probability"]


def test_an_added_attribution_method_is_drawn_checked_offered_and_reported(pipeline: dict) -> None:
    project = pipeline["project"]
    for model in MODELS:
        maps = np.load(project / "results" / "visualize" / model / "saliency.npz")
        assert maps[TOY_METHOD_NAME].shape[1:] == (48, 48) and (maps[TOY_METHOD_NAME] >= 0).all()
        sanity = json.loads((project / "results" / "visualize" / model / "sanity.json").read_text())
        assert -1 <= sanity["methods"][TOY_METHOD_NAME]["randomisation_spearman"] <= 1
        assert (project / "metrics" / "saliency" / model / f"{TOY_METHOD_NAME}.json").is_file()
    report = (project / "reports" / "report.md").read_text()
    assert f"**{TOY_METHOD_NAME}**: |input x gradient|" in report
    assert report.count(f"| {TOY_METHOD_NAME} |") == len(MODELS)  # a sanity row per model
    predict(project, "explained", "--model", "models/cnn4/model.pt", "--explain", TOY_METHOD_NAME)
    assert (project / "explained" / "explain" / "face.png").is_file()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium to render the MLflow UI in")
def test_the_mlflow_ui_shows_each_model_within_two_clicks(pipeline: dict, tmp_path: Path) -> None:
    """The real `mlflow ui` on the pipeline's store, its pages rendered by headless Chromium: the
    runs table with the datasets, a training run linking its child runs, an evaluation run with
    its parent and test metrics, and the confusion matrix and saliency images in their runs."""
    port = free_port()
    log = open(tmp_path / "ui.log", "w")
    server = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", f"sqlite:///{pipeline['project'] / 'mlflow.db'}",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=env_with_venv(),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/#/experiments/{pipeline['experiment'].experiment_id}/runs"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError("mlflow ui did not answer within 120 s:\n" + (tmp_path / "ui.log").read_text())
        runs = {name: r.info.run_id for name, r in runs_by_name(pipeline).items()}

        def page(path: str) -> str:
            return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                   "--virtual-time-budget=20000", "--dump-dom", f"{base}{path}"],
                                  capture_output=True, text=True, timeout=120).stdout

        assert {"cnn4", "cnn3", "synthetic:train"} <= set(re.findall(r"cnn4|cnn3|synthetic:train", page("")))
        training = page(f"/{runs['cnn4']}")
        assert "Child runs" in training and "evaluate-cnn4" in training and "visualize-cnn4" in training
        evaluation = page(f"/{runs['evaluate-cnn4']}")
        assert "Parent run" in evaluation and "test_accuracy" in evaluation
        assert "confusion_val.png" in page(f"/{runs['evaluate-cnn4']}/artifacts/evaluate/confusion_val.png")
        assert "saliency.png" in page(f"/{runs['visualize-resnet9']}/artifacts/visualize/saliency.png")
        assert "atlas_01.png" in page(f"/{runs['visualize-cnn4']}/artifacts/visualize/features_3_0/atlas_01.png")
    finally:
        stop_process_groups([server])
        log.close()


def test_renaming_the_experiment_retrains_nothing_and_registers_nothing(pipeline: dict) -> None:
    client, project = pipeline["client"], pipeline["project"]
    versions_before = {m.name: len(client.search_model_versions(f"name = '{m.name}'"))
                       for m in client.search_registered_models()}
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tracking"]["experiment"] = "renamed"
    write_params(project / "params.yaml", params)
    try:
        assert stages_run(run(["dvc", "repro"], project).stdout) == ["report"]  # it prints params.yaml whole
        renamed = client.get_experiment_by_name("renamed")
        assert set(runs_by_name(pipeline, renamed.experiment_id)) == {"report"}
        assert {m.name: len(client.search_model_versions(f"name = '{m.name}'"))
                for m in client.search_registered_models()} == versions_before
    finally:
        run(["git", "checkout", "params.yaml"], project)


def test_one_changed_training_param_reruns_its_model_only(pipeline: dict) -> None:
    """Only train_cnn3 and what is downstream reruns, and DVC reports the params and metrics change
    against the commit."""
    project = pipeline["project"]
    report_before = (project / "reports" / "report.md").read_text()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_cnn3"]["lr"] = 0.0005
    write_params(project / "params.yaml", params)
    changed = run(["dvc", "repro"], project)
    assert stages_run(changed.stdout) == ["train_cnn3", "evaluate", "visualize", "photos", "report"]
    assert (project / "reports" / "report.md").read_text() != report_before
    assert_report_matches_metrics(project)
    params_diff = run(["dvc", "params", "diff"], project).stdout
    assert "train_cnn3.lr" in params_diff
    assert "models/cnn3/run.json" in params_diff and "run_id" in params_diff  # the new training run
    metrics_diff = run(["dvc", "metrics", "diff"], project).stdout
    assert "metrics/evaluate/cnn3/val.json" in metrics_diff
    assert "run.json" not in metrics_diff  # results only: a new run id is not a changed result
    client = pipeline["client"]
    cnn3_runs = [r for r in client.search_runs([pipeline["experiment"].experiment_id]) if r.info.run_name == "cnn3"]
    assert len(cnn3_runs) == 2
    assert len(client.search_model_versions(f"name = '{PREFIX}cnn3'")) == 2


def test_pruning_keeps_the_champions_and_drops_superseded_runs(pipeline: dict) -> None:
    """After the retrained cnn3, its first version (no alias) and first training run go; every
    `@champion` and the newest run of each name stay."""
    client, project = pipeline["client"], pipeline["project"]
    experiment_id = pipeline["experiment"].experiment_id
    champions = {m.name: client.get_registered_model(m.name).aliases["champion"]
                 for m in client.search_registered_models()}
    newest = {name: r.info.run_id for name, r in runs_by_name(pipeline).items()}
    result = run(["python", "scripts/prune-mlflow"], project)
    assert "deleted 1 registered version(s)" in result.stdout
    assert {m.name: client.get_registered_model(m.name).aliases["champion"]
            for m in client.search_registered_models()} == champions
    assert [v.version for v in client.search_model_versions(f"name = '{PREFIX}cnn3'")] == [champions[f"{PREFIX}cnn3"]]
    remaining = {r.info.run_id for r in client.search_runs([experiment_id])}
    assert set(newest.values()) <= remaining
    assert len([r for r in client.search_runs([experiment_id]) if r.info.run_name == "cnn3"]) == 1
    assert pipeline["client"].get_model_version_by_alias(f"{PREFIX}cnn4-photo", "champion")


def training_command(project: Path, params_file: str, name: str) -> list[str]:
    """The training stage run by hand, beside the pipeline's outputs."""
    return ["python", "-m", "stages.train", "--model", "cnn4", "--params", params_file,
            "--out", f"scratch/{name}", "--checkpoints", f"scratch/{name}-checkpoints"]


def newest_cnn4_run(pipeline: dict):
    return pipeline["client"].search_runs([pipeline["experiment"].experiment_id], "attributes.run_name = 'cnn4'",
                                          order_by=["attributes.start_time DESC"], max_results=1)[0]


def test_a_diverging_training_leaves_its_run_failed(pipeline: dict) -> None:
    project = pipeline["project"]
    write_params(project / "diverging.yaml", tiny_params(train_cnn4={"lr": 1e12}))
    result = run(training_command(project, "diverging.yaml", "diverging"), project, check=False)
    assert result.returncode == 1 and "non-finite training loss" in result.stderr
    assert newest_cnn4_run(pipeline).info.status == "FAILED"


def test_an_interrupted_training_is_killed_then_resumed_to_finished(pipeline: dict) -> None:
    project = pipeline["project"]
    write_params(project / "long.yaml", tiny_params(train_cnn4={"epochs": 12}))
    command = training_command(project, "long.yaml", "long")
    # SIGINT as a terminal's Ctrl-C delivers it: a shell starting the suite in the background makes
    # its children ignore SIGINT, so the child gets the default disposition back.
    process = subprocess.Popen(command, cwd=project, env=env_with_venv(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = project / "scratch" / "long-checkpoints" / "cnn4.pt"
    deadline = time.time() + 300
    while not checkpoint.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0 and checkpoint.is_file(), output
    interrupted = newest_cnn4_run(pipeline)
    assert interrupted.info.status == "KILLED"
    resumed = run(command, project)
    assert "resuming cnn4 after epoch" in resumed.stdout
    final = pipeline["client"].get_run(interrupted.info.run_id)
    assert final.info.status == "FINISHED"
    steps = [m.step for m in pipeline["client"].get_metric_history(final.info.run_id, "val_acc")]
    assert steps == list(range(1, 13))


def assert_report_matches_metrics(project: Path) -> None:
    """Every section present, every image embedded, no external URL, numbers = metrics files."""
    from fer.report import SECTIONS, SUMMARY_METRICS

    page = (project / "reports" / "report.html").read_text()
    markdown_text = (project / "reports" / "report.md").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page and f"## {section}" in markdown_text
    images = re.findall(r"<img[^>]*>", page)
    assert len(images) == markdown_text.count("![") >= 12 * len(MODELS)  # 12 figures per model
    assert all('src="data:image/png;base64,' in tag for tag in images)
    assert not re.search(r"https?://", page)
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<math" in page and "$$" not in page
    for model in MODELS:
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
