"""Benchmark: face detection and expression prediction on hand-annotated real photos.

Reads a development set in place (default `../shared/realphotos-dev` beside the clone: photos,
one video, `manifest.json` with face boxes and labels; never copied) and reports, for the
`predict` path (`fer.predict.predict_image` with the default detector, as the command and the
served photo model run it):
- detection: required faces found (recall), detections on the photos without a person,
  detections matching no annotated face (`fer.realphotos` says how boxes are matched);
- expression: accuracy on the labelled faces found, on the clearly labelled ones, per class;
- the video: the class predicted at each annotated keyframe against its label;
- speed in-process: photos/s and faces/s of `predict_image` (model loaded once);
- speed as whole processes, in the same run: `python -m fer.predict` on all the photos, and with
  `--fer-python`, the `fer` package (Haar cascade + its own FER2013 CNN) on the same photos, with
  its detections scored the same way. The ratio of the two wall times is the comparison.

Usage: python benchmarks/real_photos.py [--dev DIR] [--model PATH] [--threads 2]
       [--fer-python /path/to/venv/bin/python] [--out benchmarks/results/real_photos.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from fer import CLASS_NAMES  # noqa: E402
from fer.faces import DetectorParams  # noqa: E402
from fer.io import write_json  # noqa: E402
from fer.predict import load_predictor, predict_image, read_image  # noqa: E402
from fer.pretrained import DEFAULT_MODEL  # noqa: E402
from fer.realphotos import AnnotatedVideo, assign, read_manifest, score_image, summarise  # noqa: E402

DEFAULT_DEV = ROOT.parent / "shared" / "realphotos-dev"

# The `fer` package on the same photos, one process: its default settings (OpenCV Haar cascade).
FER_PACKAGE_SCRIPT = """
import json, sys, cv2
from fer.fer import FER
detector = FER()
out = {}
for path in sys.argv[1:]:
    found = detector.detect_emotions(cv2.imread(path))
    out[path] = [{"box": [int(v) for v in f["box"]], "emotions": f["emotions"]} for f in found]
print(json.dumps(out))
"""


def video_keyframes(model: torch.nn.Module, path: Path, video: AnnotatedVideo, detector: DetectorParams) -> list[dict]:
    """The class predicted on the annotated face of each keyframe (frames decoded in order)."""
    capture = cv2.VideoCapture(str(path))
    rows, index, last = [], 0, max(video.keyframes)
    while index <= last:
        ok, frame = capture.read()
        if not ok:
            break
        if index in video.keyframes:
            faces = predict_image(model, frame, detector)
            annotated = video.keyframes[index]
            chosen, false_faces = assign(faces.boxes, annotated)
            for face, k in zip(annotated, chosen):
                predicted = CLASS_NAMES[int(faces.probabilities[k].argmax())] if k >= 0 else None
                rows.append({"frame": index, "label": CLASS_NAMES[face.label] if face.label is not None else None,
                             "confidence": face.confidence, "predicted": predicted, "false_faces": false_faces})
        index += 1
    capture.release()
    return rows


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def fer_package(python: str, files: list[Path], images: list, threads: int) -> dict:
    """The `fer` package's detections on `files`, scored, with its whole-process wall time."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TF_NUM_INTRAOP_THREADS": str(threads),
                        "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    # Run outside this repository: its own `fer` package would shadow the `fer` package there.
    done = subprocess.run([python, "-c", FER_PACKAGE_SCRIPT, *map(str, files)], capture_output=True, text=True,
                          env=env, check=True, timeout=1800, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - started
    found = json.loads(done.stdout.strip().splitlines()[-1])
    results = []
    for image, path in zip(images, files):
        faces = found[str(path)]
        boxes = np.asarray([f["box"] for f in faces], float).reshape(-1, 4)
        probs = np.asarray([[f["emotions"][name] for name in CLASS_NAMES] for f in faces]).reshape(-1, 7)
        results.append(score_image(image, boxes, probs))
    return {"summary": summarise(results), "process_wall_s": wall, "photos_per_s": len(files) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dev", type=Path, default=DEFAULT_DEV, help="the annotated photos (read in place)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint or MLflow model URI")
    parser.add_argument("--threads", type=int, default=2, help="compute threads, for every measured process")
    parser.add_argument("--fer-python", help="a Python with the `fer` package installed, for the comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_photos.json")
    args = parser.parse_args()
    if not (args.dev / "manifest.json").is_file():
        sys.exit(f"{args.dev}: no manifest.json; point --dev at the annotated photos")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    images, videos = read_manifest(args.dev)
    files = [args.dev / image.file for image in images]
    model, detector = load_predictor(args.model), DetectorParams()

    results, faces_found, started = [], 0, time.perf_counter()
    for image, path in zip(images, files):
        faces = predict_image(model, read_image(path), detector)
        faces_found += len(faces)
        results.append(score_image(image, faces.boxes, faces.probabilities))
    in_process = time.perf_counter() - started
    summary = summarise(results)
    video = [row for v in videos for row in video_keyframes(model, args.dev / v.file, v, detector)]

    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fer.predict", *map(str, files), "--model", args.model,
                        "--out", str(Path(tmp) / "out")], cwd=ROOT, env=env, check=True, capture_output=True)
        process_wall = time.perf_counter() - started
    report = {
        "machine": {"cpu": cpu_name(), "threads": args.threads,
                    "torch": torch.__version__, "load_average": os.getloadavg()},
        "model": args.model, "detector": {k: v for k, v in vars(detector).items()},
        "predict": {"summary": summary, "video_keyframes": video,
                    "in_process_s": in_process, "photos_per_s": len(files) / in_process,
                    "faces_per_s": faces_found / in_process,
                    "process_wall_s": process_wall, "process_photos_per_s": len(files) / process_wall}}
    if args.fer_python:
        report["fer_package"] = fer_package(args.fer_python, files, images, args.threads)
        report["speed_ratio_process"] = report["fer_package"]["process_wall_s"] / process_wall
    write_json(args.out, report)

    def line(name: str, s: dict, wall: float) -> str:
        return (f"{name:12s} required {s['required_found']}/{s['required_faces']}  on negatives "
                f"{s['detections_on_negatives']}  false faces {s['false_faces']}  expression "
                f"{s['expression']['right']}/{s['expression']['faces']} (clear "
                f"{s['expression_clear']['right']}/{s['expression_clear']['faces']})  process {wall:.1f} s")

    print(line("predict", summary, process_wall))
    if args.fer_python:
        print(line("fer package", report["fer_package"]["summary"], report["fer_package"]["process_wall_s"]))
        print(f"whole-process speed, fer package time / predict time: {report['speed_ratio_process']:.2f}x")
    print(f"in-process: {len(files) / in_process:.2f} photos/s, {faces_found / in_process:.1f} faces/s")
    print("video keyframes: " + ", ".join(f"{r['frame']}: {r['predicted']} ({r['label']})" for r in video))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
