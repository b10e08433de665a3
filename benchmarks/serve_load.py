"""Benchmark: the served photo model under load, and under a hostile request.

Logs the photo model of a checkpoint (default: the shipped FER2013 CNN4) into a temporary MLflow
store, serves it with `mlflow models serve --env-manager local` on 127.0.0.1, and sends:
- `--clients` concurrent clients, each `--requests` requests of one photo (the annotated real
  photos read in place when present, else synthetic photos), bounded by `--timeout` seconds;
- one small PNG whose header declares 20000x20000 pixels, and one request over the image limit.
Printed (and written as JSON): requests/s, p50/p95 latency, errors, the HTTP status of the hostile
requests, and the peak resident memory of the server's whole process group (sampled every 0.1 s).
The server is stopped (its process group) whatever happens.

Usage: python benchmarks/serve_load.py [--model PATH] [--clients 8] [--requests 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from fer.data.synthetic import generate_split  # noqa: E402
from fer.faces import CanvasParams, compose_canvas  # noqa: E402
from fer.photo_model import RequestLimits, encode_image, log_photo_model  # noqa: E402
from fer.pretrained import DEFAULT_MODEL  # noqa: E402
from tests.conftest import png_declaring  # noqa: E402

DEV = ROOT.parent / "shared" / "realphotos-dev"


def photos() -> tuple[list[str], str]:
    """Base64 photos to send: the annotated real photos when present, else synthetic ones."""
    if (DEV / "manifest.json").is_file():
        entries = [e for e in json.loads((DEV / "manifest.json").read_text()) if e["kind"] == "image"]
        encoded = [base64.b64encode((DEV / e["file"]).read_bytes()).decode() for e in entries]
        return encoded, f"{len(entries)} real photos"
    faces = generate_split(40, seed=0).images
    rng = np.random.default_rng(0)
    return [encode_image(compose_canvas(faces[i:i + 4], faces, rng, CanvasParams())[0]) for i in range(0, 40, 4)], \
        "10 synthetic photos"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_rss(pgid: int) -> int:
    total = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                total += proc.memory_info().rss
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint bundled by the photo model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5, help="requests per client")
    parser.add_argument("--threads", type=int, default=2, help="compute threads of the server")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the whole load phase")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()
    import mlflow

    payloads, what = photos()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("serve-load", artifact_location=(Path(tmp) / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            model_uri = log_photo_model(args.model)
        port = free_port()
        env = os.environ | {"MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": str(args.threads)}
        log = open(Path(tmp) / "server.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--host",
                                   "127.0.0.1", "--port", str(port), "--env-manager", "local", "--workers", "1"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}/invocations"
        peak, sampling = [0], threading.Event()

        def sample() -> None:
            while not sampling.wait(0.1):
                peak[0] = max(peak[0], group_rss(server.pid))

        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.5)
            else:
                sys.exit("the model server did not answer within 120 s")
            threading.Thread(target=sample, daemon=True).start()
            idle = group_rss(server.pid)

            def client(k: int) -> list[tuple[float, int]]:
                out = []
                for i in range(args.requests):
                    body = {"dataframe_split": {"columns": ["image"], "data": [[payloads[(k * args.requests + i)
                                                                                         % len(payloads)]]]}}
                    started = time.perf_counter()
                    try:
                        status = requests.post(url, json=body, timeout=args.timeout).status_code
                    except requests.RequestException:
                        status = -1
                    out.append((time.perf_counter() - started, status))
                return out

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                results = [r for batch in pool.map(client, range(args.clients)) for r in batch]
            wall = time.perf_counter() - started
            load_peak = peak[0]
            hostile = {}
            for name, data in (("20000x20000 PNG header", [[base64.b64encode(png_declaring(20000, 20000)).decode()]]),
                               (f"{RequestLimits().max_images + 1} images",
                                [[payloads[0]]] * (RequestLimits().max_images + 1))):
                started_h = time.perf_counter()
                answer = requests.post(url, json={"dataframe_split": {"columns": ["image"], "data": data}}, timeout=60)
                hostile[name] = {"status": answer.status_code, "seconds": time.perf_counter() - started_h,
                                 "message": answer.json().get("message", "")[:160]}
            sampling.set()
        except Exception:
            print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    latencies = sorted(t for t, s in results if s == 200)
    report = {"photos": what, "clients": args.clients, "requests": len(results), "wall_s": wall,
              "requests_per_s": len(results) / wall, "errors": sum(s != 200 for _, s in results),
              "p50_s": statistics.median(latencies) if latencies else None,
              "p95_s": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
              "server_rss_idle_mb": idle / 2**20, "server_rss_peak_mb": max(load_peak, peak[0]) / 2**20,
              "hostile": hostile, "server_threads": args.threads, "load_average": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
