"""Benchmark report: time to accuracy from a `fer2013_sweep.py` log, as a table and a figure.

For each job of the log: the epoch selected on PublicTest (the best PublicTest accuracy so far,
as the training stage selects), the training time at which it finished, its PrivateTest accuracy
in a single pass, and the first time a selected checkpoint reached `--target` PrivateTest. The
training time is the sum of the epochs' own times (training and the PublicTest validation pass the
training stage makes); the benchmark's per-epoch PrivateTest pass is not training and is left out
(the wall time with it is printed too). The figure draws PublicTest and PrivateTest against
minutes of training for every job. PrivateTest never chooses anything: it is read at the epoch
PublicTest chose.

Usage: python benchmarks/time_to_accuracy.py LOG.jsonl [--target 0.65] [--out docs/time_to_accuracy.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from fer.io import save_figure  # noqa: E402
from fer.plots import time_to_accuracy_figure  # noqa: E402


def epochs_by_job(log: Path) -> dict[str, list[dict]]:
    """Each job's epoch rows, with `training_seconds`: the epochs' own times summed so far."""
    jobs: dict[str, list[dict]] = {}
    for row in map(json.loads, log.read_text().splitlines()):
        if not row.get("final"):
            rows = jobs.setdefault(row["job"], [])
            rows.append(row | {"training_seconds": (rows[-1]["training_seconds"] if rows else 0.0)
                               + row["epoch_seconds"]})
    return jobs


def selected_epochs(rows: list[dict]) -> list[dict]:
    """After each epoch, the epoch PublicTest selects so far (ties keep the earlier one)."""
    chosen, best = [], None
    for row in rows:
        if best is None or row["val_acc"] > best["val_acc"]:
            best = row
        chosen.append(best | {"at_seconds": row["training_seconds"]})
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="JSON lines written by benchmarks/fer2013_sweep.py")
    parser.add_argument("--target", type=float, default=0.65, help="PrivateTest accuracy to reach")
    parser.add_argument("--out", type=Path, help="PNG of the curves (default: none)")
    args = parser.parse_args()
    jobs = epochs_by_job(args.log)
    for job, rows in jobs.items():
        chosen = selected_epochs(rows)
        final = chosen[-1]
        reached = next((c for c in chosen if c["test_acc"] >= args.target), None)
        print(f"{job}: {len(rows)} epochs in {rows[-1]['training_seconds'] / 60:.1f} min of training "
              f"({rows[-1]['elapsed_seconds'] / 60:.1f} min wall with the PrivateTest passes); selected epoch "
              f"{final['epoch']} (PublicTest {final['val_acc']:.4f}) finished at "
              f"{final['training_seconds'] / 60:.1f} min, "
              f"PrivateTest {final['test_acc']:.4f}; " + (
                  f"{args.target:.2f} first reached by a selected epoch ({reached['epoch']}) at "
                  f"{reached['at_seconds'] / 60:.1f} min" if reached else f"{args.target:.2f} not reached"))
    if args.out:
        curves = {job: [(r["training_seconds"] / 60, r["val_acc"], r["test_acc"]) for r in rows]
                  for job, rows in jobs.items()}
        title = f"CNN4 on FER2013: accuracy against training time ({args.log.name})"
        save_figure(args.out, time_to_accuracy_figure(curves, args.target, title))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
