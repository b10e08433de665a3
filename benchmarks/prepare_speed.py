"""Benchmark: the `prepare` stage on the full FER2013 file, timed as a user runs it, next to its
reader alone and a plain pandas reader, all in the same run.

Every measurement is a fresh subprocess, so imports count:
- stage:  `python -m stages.prepare` in a temporary copy of the project (stages/, fer/ and
          params.yaml with prepare.source set to the file): reading, the quality report, writing
          the arrays and the MLflow run. The first run in the copy also creates the MLflow store;
          it is reported apart from the repeats.
- reader: the project's reader (`fer.data.sources.read_source`) alone.
- pandas: the plain reference, `pd.read_csv` + `str.split` + one `np.array` per row (run once:
          it peaks at about 6 GB).
Printed: wall seconds, CPU seconds (user + system, all threads: less sensitive than wall time to
other work on a shared machine), peak RSS, the ratios, and the machine with its load average.

Usage: python benchmarks/prepare_speed.py [path/to/fer2013.csv.gz] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "fer2013.csv.gz"
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere


def project_reader(path: Path) -> int:
    from fer.data.sources import read_source

    return sum(len(s) for s in read_source(path, "auto", 0.1, 0).values())


def pandas_baseline(path: Path) -> int:
    import numpy as np
    import pandas as pd

    df = pd.read_csv(path)
    images = np.stack([np.array(tokens, dtype=np.uint8) for tokens in df.pixels.str.split()])
    return len(images.reshape(-1, 48, 48))


def timed(cmd: list[str], cwd: Path) -> dict[str, float]:
    """Run `cmd`; its wall and CPU seconds and peak RSS (from wait4), or exit with its output."""
    # The copy's own MLflow store and DVC root, not an inherited one.
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE")}
    started = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with process.stdout:  # type: ignore[union-attr]
        output = process.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{output}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "output": output}


def stage_project(directory: Path, data: Path) -> Path:
    """A copy of the project that runs `prepare` on `data` (the params of params.yaml otherwise)."""
    import yaml

    for name in ("stages", "fer"):
        shutil.copytree(ROOT / name, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"]["source"] = str(data.resolve())
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return directory


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, {platform.system()}; load average {load} (1/5/15 min)"


def line(name: str, runs: list[dict[str, float]]) -> dict[str, float]:
    """Print the median wall/CPU of `runs` (and their range) and return the medians."""
    median = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "peak_rss_mb")}
    spread = f"  (wall {min(r['wall'] for r in runs):.2f}-{max(r['wall'] for r in runs):.2f} s over {len(runs)})"
    print(f"{name:<34} wall {median['wall']:6.2f} s  CPU {median['cpu']:6.2f} s  "
          f"peak RSS {median['peak_rss_mb']:5.0f} MB" + (spread if len(runs) > 1 else ""))
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT, help="Kaggle-layout FER2013 CSV")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement")
    parser.add_argument("--child", choices=["project", "pandas"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rows = (project_reader if args.child == "project" else pandas_baseline)(args.path)
        print(json.dumps({"rows": rows}))
        return
    if not args.path.is_file():
        sys.exit(f"error: {args.path}: file not found (pass the FER2013 CSV path)")
    print(f"machine: {machine()}")
    print(f"data: {args.path} ({args.path.stat().st_size / 1e6:.0f} MB)\n")
    with tempfile.TemporaryDirectory(prefix="prepare-speed-") as tmp:
        project = stage_project(Path(tmp), args.path)
        stage_cmd = [sys.executable, "-m", "stages.prepare"]
        first = line("stage, first run (new MLflow store)", [timed(stage_cmd, project)])
        stage = line("stage `python -m stages.prepare`", [timed(stage_cmd, project) for _ in range(args.repeats)])
        readers = {}
        for which, repeats in (("project", args.repeats), ("pandas", 1)):  # pandas: about 6 GB, once
            cmd = [sys.executable, __file__, str(args.path), "--child", which]
            readers[which] = line(f"reader alone: {which}", [timed(cmd, ROOT) for _ in range(repeats)])
    print()
    for clock in ("wall", "cpu"):
        print(f"{clock:>4}: project reader {readers['pandas'][clock] / readers['project'][clock]:.1f}x faster than "
              f"the pandas baseline; reading is {readers['project'][clock] / stage[clock]:.0%} of the stage; "
              f"the first run's store creation adds {first[clock] - stage[clock]:+.2f} s")
    print(f"after: load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
