"""Wall time of a 4-experiment sweep run by DVC's queue with 1 and with 2 workers.

A temporary git + DVC copy of the project runs the pipeline once (not timed), then queues the
same kind of sweep twice, each over `train_cnn3.lr` (new values each time, so that DVC's run cache
cannot restore anything), and runs it with `dvc queue start -j 1` and `-j 2`. Prints both wall
times and their ratio. Every experiment logs into the copy's own MLflow store.

    python benchmarks/queue_sweep.py                  # tiny data (the size the tests use)
    python benchmarks/queue_sweep.py --params params.yaml --keep /tmp/sweep
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import env_with_venv, make_tiny_project, tiny_params, write_params  # noqa: E402

EXPERIMENTS = 4


def sh(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env_with_venv() | (extra_env or {}), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def sweep(project: Path, workers: int, lrs: list[float]) -> float:
    for lr in lrs:
        sh(["dvc", "exp", "run", "--queue", "-S", f"train_cnn3.lr={lr}"], project)
    started = time.perf_counter()
    # The cores are shared out between the workers: more compute threads than cores make
    # PyTorch's thread pools wait on each other and run many times slower.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    sh(["dvc", "queue", "start", "-j", str(workers)], project, {"OMP_NUM_THREADS": threads})
    while re.search(r"\b(Queued|Running)\b", status := sh(["dvc", "queue", "status"], project)):
        time.sleep(1)
    elapsed = time.perf_counter() - started
    if "Failed" in status:
        raise SystemExit(f"an experiment failed:\n{status}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", help="a params.yaml to use instead of the tiny test params")
    parser.add_argument("--keep", help="keep the project in this directory")
    args = parser.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fer-sweep-"))
    project = make_tiny_project(base / "project")
    if args.params:
        shutil.copy(args.params, project / "params.yaml")
    else:
        write_params(project / "params.yaml", tiny_params())
    sh(["dvc", "repro"], project)
    sh(["git", "add", "-A"], project)
    sh(["git", "commit", "-qm", "baseline"], project)
    one = sweep(project, 1, [0.001 + 0.0001 * i for i in range(EXPERIMENTS)])
    two = sweep(project, 2, [0.002 + 0.0001 * i for i in range(EXPERIMENTS)])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{EXPERIMENTS} experiments (train_cnn3 -> evaluate -> visualize -> report each)")
    print(f"  1 worker : {one:7.1f} s")
    print(f"  2 workers: {two:7.1f} s")
    print(f"  ratio 1 worker / 2 workers: {one / two:.2f}")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
