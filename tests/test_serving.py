"""Both registered models served by the real `mlflow models serve`: the tensor model (a float32
(N, 1, 48, 48) batch in, logits out) and the photo model (base64 photos in, one row per face
out). Answers are checked against in-process predictions; malformed requests get HTTP 400.
The models are logged into a temporary SQLite store; the servers run in their own process group
and are stopped with it, also when a test fails."""
from __future__ import annotations

import base64
import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch

from fer.data.synthetic import generate_split
from fer.faces import CanvasParams, DetectorParams, compose_canvas
from fer.models import build_model, model_params, save_checkpoint
from fer.photo_model import OUTPUT_COLUMNS, BadPhoto, RequestLimits, encode_image, predict_photos, register_photo_model
from fer.predict import load_predictor, probabilities
from tests.conftest import env_with_venv, free_port, png_declaring, stop_process_groups

pytestmark = pytest.mark.slow

HEALTH_TIMEOUT_S = 180
TENSOR_NAME, PHOTO_NAME = "test-cnn4", "test-cnn4-photo"


@contextlib.contextmanager
def _servers(uris: list[str], tracking_uri: str, log_dir: Path) -> Iterator[list[str]]:
    """Start `mlflow models serve` for each URI (in parallel), wait until each answers /ping,
    yield their base URLs, and stop each whole process group on the way out."""
    env = env_with_venv() | {"MLFLOW_TRACKING_URI": tracking_uri}
    processes, urls = [], []
    try:
        for i, uri in enumerate(uris):
            port = free_port()
            with open(log_dir / f"server_{i}.log", "w") as log:  # the child keeps its own descriptor
                processes.append(subprocess.Popen(
                    ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1",
                     "-p", str(port)],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        for i, (process, url) in enumerate(zip(processes, urls)):
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"server for {uris[i]} exited:\n{(log_dir / f'server_{i}.log').read_text()}")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"server for {uris[i]} not healthy after {HEALTH_TIMEOUT_S} s")
                time.sleep(1)
        yield urls
    finally:
        stop_process_groups(processes)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A seeded CNN4 (untrained: the check is that serving and in-process agree), logged as the
    tensor model and as the photo model into a temporary store, both served."""
    import mlflow

    from fer import tracking

    tmp = tmp_path_factory.mktemp("serving")
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    torch.manual_seed(0)
    params = model_params({"arch": "cnn4", "batch_norm": True, "dropout_conv": 0.0, "dropout_fc": 0.3,
                           "fc_hidden": 32}, "model")
    model = build_model(params).eval()
    checkpoint = tmp / "model.pt"
    save_checkpoint(model, checkpoint)
    try:
        experiment = mlflow.create_experiment("serving", artifact_location=(tmp / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            example = np.random.default_rng(0).random((2, 1, 48, 48), dtype=np.float32)
            info = tracking.log_torch_model(model, checkpoint, example)
            tracking.register(TENSOR_NAME, {"checkpoint_sha256": tracking.file_sha256(checkpoint)},
                              lambda: info.model_uri)
            register_photo_model(checkpoint, PHOTO_NAME)
        uris = [f"models:/{TENSOR_NAME}@champion", f"models:/{PHOTO_NAME}@champion"]
        in_process = mlflow.pyfunc.load_model(uris[1])
        with _servers(uris, tracking_uri, tmp) as urls:
            yield {"model": model, "tensor_url": urls[0], "photo_url": urls[1], "photo_pyfunc": in_process,
                   "tracking_uri": tracking_uri, "checkpoint": checkpoint, "experiment": experiment}
    finally:
        mlflow.set_tracking_uri(previous)


def _photos() -> list[str]:
    """Three synthetic photos with four faces each, and one without a face."""
    faces = generate_split(16, seed=3).images
    rng = np.random.default_rng(0)
    photos = [compose_canvas(faces[4 * i:4 * i + 4], faces, rng, CanvasParams())[0] for i in range(3)]
    photos.append(compose_canvas(faces[:0], faces, rng, CanvasParams())[0])
    return [encode_image(p) for p in photos]


def test_tensor_model_served(served: dict) -> None:
    batch = np.random.default_rng(1).random((3, 1, 48, 48), dtype=np.float32)
    answer = requests.post(f"{served['tensor_url']}/invocations", json={"inputs": batch.tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text
    with torch.no_grad():
        expected = served["model"](torch.as_tensor(batch)).numpy()
    np.testing.assert_allclose(np.asarray(answer.json()["predictions"]), expected, atol=1e-4)

    wrong = requests.post(f"{served['tensor_url']}/invocations", json={"inputs": batch[:, 0].tolist()}, timeout=60)
    assert wrong.status_code == 400
    assert "shape" in wrong.json()["message"].lower()


def test_photo_model_served(served: dict) -> None:
    photos = _photos()
    answer = requests.post(f"{served['photo_url']}/invocations",
                           json={"dataframe_split": {"columns": ["image"], "data": [[p] for p in photos]}}, timeout=120)
    assert answer.status_code == 200, answer.text
    rows = pd.DataFrame(answer.json()["predictions"])
    assert list(rows.columns) == list(OUTPUT_COLUMNS)
    expected = served["photo_pyfunc"].predict(pd.DataFrame({"image": photos}))
    direct = predict_photos(served["model"], photos, DetectorParams())
    pd.testing.assert_frame_equal(expected, direct)
    assert len(rows) == len(expected) > 0
    assert 3 not in set(rows["image"])  # the photo without a face has no row
    np.testing.assert_array_equal(rows[["image", "face", "x", "y", "w", "h"]].to_numpy(),
                                  expected[["image", "face", "x", "y", "w", "h"]].to_numpy())
    np.testing.assert_allclose(rows[["angry", "happy", "neutral"]].to_numpy(),
                               expected[["angry", "happy", "neutral"]].to_numpy(), atol=1e-6)
    assert rows["top"].tolist() == expected["top"].tolist()


def test_photo_model_rejects_malformed_requests(served: dict) -> None:
    url = f"{served['photo_url']}/invocations"
    not_an_image = base64.b64encode(b"hello, not a picture").decode()
    bad = requests.post(url, json={"dataframe_split": {"columns": ["image"], "data": [[_photos()[0]], [not_an_image]]}},
                        timeout=60)
    assert bad.status_code == 400
    assert "image 1: not a readable image" in bad.json()["message"]
    missing = requests.post(url, json={"dataframe_split": {"columns": ["picture"], "data": [["x"]]}}, timeout=60)
    assert missing.status_code == 400
    assert "image" in missing.json()["message"]


def test_photo_model_refuses_requests_over_its_limits(served: dict) -> None:
    """A small PNG declaring 20000x20000 pixels is refused from its header (HTTP 400, the server
    stays up), as is a request with more images than allowed; the in-process model agrees."""
    url = f"{served['photo_url']}/invocations"
    huge = base64.b64encode(png_declaring(20000, 20000)).decode()
    answer = requests.post(url, json={"dataframe_split": {"columns": ["image"], "data": [[huge]]}}, timeout=60)
    assert answer.status_code == 400
    assert answer.json()["message"].endswith("Error: image 0: declares 400,000,000 pixels, more than the limit of "
                                             "50,000,000; scale it down first")
    photo = _photos()[0]
    crowded = [[photo]] * (RequestLimits().max_images + 1)
    answer = requests.post(url, json={"dataframe_split": {"columns": ["image"], "data": crowded}}, timeout=60)
    assert answer.status_code == 400 and "more than the limit of 16" in answer.json()["message"]
    with pytest.raises(BadPhoto, match="bytes of images in one request"):
        predict_photos(served["model"], [photo] * 2, DetectorParams(), limits=RequestLimits(max_bytes=len(photo)))
    assert requests.post(url, json={"dataframe_split": {"columns": ["image"], "data": [[photo]]}},
                         timeout=60).status_code == 200


def test_predict_loads_both_registered_models(served: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--model` with an MLflow URI in each documented form gives the checkpoint's network back,
    from either model."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", served["tracking_uri"])
    crops = generate_split(7, seed=6).images
    expected = probabilities(served["model"], crops, torch.device("cpu"))
    [tensor] = MlflowClient(served["tracking_uri"]).search_model_versions(f"name = '{TENSOR_NAME}'")
    for uri in (f"models:/{TENSOR_NAME}@champion", f"models:/{PHOTO_NAME}@champion", f"models:/{TENSOR_NAME}/latest",
                f"models:/{PHOTO_NAME}/latest", f"models:/{TENSOR_NAME}/1", f"runs:/{tensor.run_id}/model"):
        np.testing.assert_allclose(probabilities(load_predictor(uri), crops, torch.device("cpu")), expected,
                                   atol=1e-6, err_msg=uri)


def test_unchanged_weights_register_no_new_version(served: dict) -> None:
    """Registering the same checkpoint with the same settings again finds the existing version
    (tagged with the checkpoint's sha256) and logs nothing; other settings make a new version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from fer import tracking

    client = MlflowClient(served["tracking_uri"])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(served["tracking_uri"])
    try:
        with mlflow.start_run(experiment_id=served["experiment"]) as again:
            assert register_photo_model(served["checkpoint"], PHOTO_NAME) == "1"
        assert client.get_run(again.info.run_id).outputs.model_outputs == []  # nothing logged
        with mlflow.start_run(experiment_id=served["experiment"]):
            assert register_photo_model(served["checkpoint"], PHOTO_NAME, limits=RequestLimits(max_images=4)) == "2"
        assert str(client.get_model_version_by_alias(PHOTO_NAME, tracking.CHAMPION).version) == "2"
        assert len(client.search_model_versions(f"name = '{PHOTO_NAME}'")) == 2
    finally:
        mlflow.set_tracking_uri(previous)
