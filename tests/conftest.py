"""Shared fixtures: small generated datasets and a tiny copy of the real project."""
from __future__ import annotations

import copy
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "stages", "fer", "scripts")
FER2013 = ROOT.parent / "shared" / "data" / "fer2013.csv.gz"
REAL_PHOTOS = ROOT.parent / "shared" / "realphotos-dev"  # annotated real photos, read in place


def tiny_params(**overrides: dict) -> dict:
    """params.yaml shrunk so that the whole pipeline runs in well under a minute."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"]["synthetic"].update(n_train=210, n_val=70, n_test=70)
    for name in params["study"]["models"]:
        params[f"train_{name}"].update(epochs=2, batch_size=32)
        model = params[f"train_{name}"]["model"]
        model.update({"fc_hidden": 32} if "fc_hidden" in model else {"width": 8} if "width" in model else {})
    visualize = params["visualize"]
    visualize["methods"]["smoothgrad"]["samples"] = 2
    visualize["methods"]["integrated_gradients"]["steps"] = 4
    visualize["sanity"].update(images=8, expensive_images=4, deletion_steps=4)
    visualize["filters"].update(layers="last", steps=4, channels=16)
    for section, values in overrides.items():
        for dotted, value in values.items():  # nested keys as "filters.layers"
            *parents, leaf = dotted.split(".")
            node = params[section]
            for key in parents:
                node = node[key]
            node[leaf] = value
    return params


def write_params(path: Path, params: dict) -> None:
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def env_with_venv() -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin first on PATH (so `dvc` and the
    stages' `python` are the project's), no inherited MLflow or DVC location."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME",
                        "DVC_EXP_BASELINE_REV")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command with the project's environment (plus `env`); by default it must succeed."""
    result = subprocess.run(cmd, cwd=cwd, env=env_with_venv() | (env or {}), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding the project's code and tiny params."""
    return make_tiny_project(tmp_path / "project")


def make_tiny_project(project: Path, params: dict | None = None) -> Path:
    project.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, project / name)
    write_params(project / "params.yaml", params or tiny_params())
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "config", "core.analytics", "false"], project)
    return project


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


def pixel_string(image: np.ndarray) -> str:
    return " ".join(map(str, image.ravel().tolist()))


def write_kaggle_csv(path: Path, rows: list[tuple[object, str, str]], gz: bool = False) -> Path:
    text = "emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows)
    if gz:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def kaggle_rows(per_usage: int = 7, seed: int = 0) -> list[tuple[object, str, str]]:
    """Valid Kaggle rows: `per_usage` images of each usage, cycling through the 7 classes."""
    images = random_images(3 * per_usage, seed)
    usages = ["Training"] * per_usage + ["PublicTest"] * per_usage + ["PrivateTest"] * per_usage
    return [(i % 7, pixel_string(img), u) for i, (img, u) in enumerate(zip(images, usages))]


def with_row(rows: list, index: int, **fields) -> list:
    """A copy of rows where row `index` has some fields replaced (emotion, pixels, usage)."""
    rows = copy.deepcopy(rows)
    e, p, u = rows[index]
    rows[index] = (fields.get("emotion", e), fields.get("pixels", p), fields.get("usage", u))
    return rows


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_groups(processes: list[subprocess.Popen], timeout: float = 20) -> None:
    """SIGTERM each process's whole group (servers' workers outlive their parent), then SIGKILL a
    group that has not ended within `timeout` seconds."""
    import contextlib
    import signal

    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)


class MlflowServer:
    """A real `mlflow server` started with scripts/mlflow-server (the script `make mlflow-server`
    runs) on 127.0.0.1, in its own process group, with its store and artifacts under `directory`."""

    def __init__(self, directory: Path, backend: str = "sqlite") -> None:
        self.directory, self.backend, self.port = directory, backend, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = directory / "artifacts"

    def _script(self, action: str) -> subprocess.CompletedProcess:
        env = env_with_venv() | {"MLFLOW_SERVER_DIR": str(self.directory), "MLFLOW_PORT": str(self.port),
                                 "MLFLOW_BACKEND": self.backend, "PG_PORT": str(free_port()),
                                 "MLFLOW_WORKERS": "1", "START_TIMEOUT": "150"}
        return subprocess.run([str(ROOT / "scripts" / "mlflow-server"), action], env=env, capture_output=True,
                              text=True, timeout=200)

    def start(self) -> MlflowServer:
        result = self._script("start")
        if result.returncode != 0:
            self.stop()
            raise AssertionError(f"mlflow server did not start:\n{result.stdout}\n{result.stderr}")
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group (the server's workers outlive a kill of the parent)."""
        import signal

        pid = int((self.directory / "server.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        (self.directory / "server.pid").unlink()

    def stop(self) -> None:
        self._script("stop")


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A SQLite-backed tracking server, always stopped, also when the test fails."""
    server = MlflowServer(tmp_path / "server")
    try:
        yield server.start()
    finally:
        server.stop()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring `width` x `height` gray pixels, with two rows of data: a few
    hundred bytes that a decoder would expand to width x height bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 2))
            + chunk(b"IEND", b""))
