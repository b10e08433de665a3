"""Benchmark: faces per second of the `predict` path on one photo, against prediction alone.

- photo:      `fer.predict.predict_image` on a 640x480 photo holding 4 faces (FER2013 PrivateTest
              faces pasted as in the round trip when the file is present, else synthetic faces):
              Haar detection + crop + CNN, one photo at a time, as the command and the photo
              model run it.
- detection:  `fer.faces.detect_faces` alone on the same photo.
- prediction: the plain reference, `fer.predict.probabilities` on a batch of 256 ready 48x48
              crops (the CNN alone, batched, one view per crop), and the same batch with the
              10 test-time views `predict` averages by default (`fer.predict.probabilities` with the detector's views).
Printed: median wall seconds of --repeats runs (after one warm-up), CPU seconds, faces per
second, the ratio prediction / photo, and the machine with its load average.

Usage: python benchmarks/predict_speed.py [--model models/cnn4/model.pt] [--data fer2013.csv.gz] [--repeats 20]
       [--threads N]
"""
from __future__ import annotations

import argparse
import gzip
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from fer.data.synthetic import generate_split  # noqa: E402
from fer.faces import CanvasParams, DetectorParams, compose_canvas, detect_faces  # noqa: E402
from fer.predict import load_predictor, predict_image, probabilities  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013.csv.gz"
BATCH = 256


def faces_for_photo(data: Path, n: int) -> tuple[np.ndarray, str]:
    """`n` PrivateTest faces streamed from the Kaggle file, or synthetic faces without it."""
    if not data.is_file():
        return generate_split(max(n, 7), seed=0).images[:n], "synthetic faces"
    faces = []
    with gzip.open(data, "rt") as handle:
        for line in handle:
            if line.rstrip().endswith("PrivateTest"):
                faces.append(np.array(line.split(",")[1].split(), dtype=np.uint8).reshape(48, 48))
                if len(faces) == n:
                    break
    return np.stack(faces), "FER2013 PrivateTest faces"


def timed(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall seconds and mean CPU seconds of `run` over `repeats` calls after a warm-up."""
    run()
    walls, cpu = [], time.process_time()
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        walls.append(time.perf_counter() - started)
    return statistics.median(walls), (time.process_time() - cpu) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "cnn4" / "model.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch and OpenCV threads (0: their defaults)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    model = load_predictor(args.model)
    cpu = torch.device("cpu")
    faces, kind = faces_for_photo(args.data, 40)
    canvas = CanvasParams()
    photo, _ = compose_canvas(faces[:canvas.faces], faces, np.random.default_rng(0), canvas)
    photo = cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR)  # as a photo file is read
    detector = DetectorParams()
    found = len(predict_image(model, photo, detector, True, cpu))
    crops = np.resize(faces, (BATCH, 48, 48))

    photo_s, photo_cpu = timed(lambda: predict_image(model, photo, detector, True, cpu), args.repeats)
    detect_s, detect_cpu = timed(lambda: detect_faces(photo, detector), args.repeats)
    batch_s, batch_cpu = timed(lambda: probabilities(model, crops, cpu), args.repeats)
    views_s, views_cpu = timed(lambda: probabilities(model, crops, cpu, detector), args.repeats)
    photo_rate, batch_rate = found / photo_s, BATCH / batch_s
    print(f"photo 640x480 with {canvas.faces} pasted {kind}, {found} found; detector "
          f"{'+'.join(detector.cascades)}, minNeighbors {detector.min_neighbors}")
    print(f"  detection + crop + prediction: {photo_s * 1000:7.1f} ms/photo (CPU {photo_cpu * 1000:.0f} ms)"
          f"  {photo_rate:8.1f} faces/s")
    print(f"  of which detection alone:      {detect_s * 1000:7.1f} ms/photo (CPU {detect_cpu * 1000:.0f} ms)")
    print(f"  prediction alone, batch {BATCH}:  {batch_s * 1000:7.1f} ms/batch (CPU {batch_cpu * 1000:.0f} ms)"
          f"  {batch_rate:8.1f} faces/s")
    print(f"  the same with predict's views: {views_s * 1000:7.1f} ms/batch (CPU {views_cpu * 1000:.0f} ms)"
          f"  {BATCH / views_s:8.1f} faces/s (flip {detector.tta_flip}, shift {detector.tta_shift} px)")
    print(f"  ratio prediction alone / whole path: {batch_rate / photo_rate:.1f}x faces per second")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads); "
          f"load average {load}; {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
