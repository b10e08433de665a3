"""Benchmark: parse the full FER2013 CSV with the project's reader and with a plain pandas
baseline (`df.pixels.str.split()` + per-row `np.array`), in the same run; print wall time,
peak RSS of each (each in a fresh subprocess) and the ratio.

Usage: python benchmarks/prepare_speed.py [path/to/fer2013.csv.gz]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
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


def measure(which: str, path: Path) -> None:
    """Child process: run one reader, print JSON with seconds, rows and peak RSS."""
    started = time.perf_counter()
    rows = (project_reader if which == "project" else pandas_baseline)(path)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT, help="Kaggle-layout FER2013 CSV")
    parser.add_argument("--child", choices=["project", "pandas"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return measure(args.child, args.path)
    if not args.path.is_file():
        sys.exit(f"error: {args.path}: file not found (pass the FER2013 CSV path)")
    results = {}
    for which in ("project", "pandas"):
        out = subprocess.run([sys.executable, __file__, str(args.path), "--child", which],
                             capture_output=True, text=True, check=True)
        results[which] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[which]
        print(f"{which:>8}: {r['seconds']:6.2f} s  {r['rows']} rows  peak RSS {r['peak_rss_mb']:.0f} MB")
    ratio = results["pandas"]["seconds"] / results["project"]["seconds"]
    print(f"speed-up of the project reader over the pandas baseline: {ratio:.1f}x")


if __name__ == "__main__":
    main()
