"""Benchmark: train several variants of the FER2013 profile side by side and report, per epoch,
PublicTest (the selection split) and PrivateTest accuracy, then the best checkpoint's accuracy
with and without test-time augmentation.

This is how the settings in `params/fer2013.yaml` were chosen. Selection uses PublicTest only
(best epoch = highest PublicTest accuracy); PrivateTest is recorded for the report and for the
"time to 0.65 PrivateTest" figure, never used to pick anything inside a job.

Each job is a train_<model> section of the profile with some keys replaced (`set:` in the grid
file, dotted keys such as `augment.erasing_prob`). Jobs run in parallel worker processes (useful
on a GPU, where one small CNN leaves the device mostly idle); every epoch appends one JSON line
to --out, so an interrupted sweep keeps what it measured.

Usage: python benchmarks/fer2013_sweep.py --data data/prepared --grid benchmarks/fer2013_grid.yaml \
           [--profile params/fer2013.yaml] [--workers 4] [--only NAME ...] [--out sweep.jsonl] [--save DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

import torch  # noqa: E402
import yaml  # noqa: E402

from fer.data import Split, load_prepared, training_data  # noqa: E402
from fer.inference import predict_logits  # noqa: E402
from fer.models import build_model, save_checkpoint  # noqa: E402
from fer.params import TrainParams, build_section, read_params, with_overrides  # noqa: E402
from fer.runtime import reuse_freed_memory, seed_everything, select_device  # noqa: E402
from fer.training import EpochRecord, fit  # noqa: E402


def accuracy(model: torch.nn.Module, split: Split, device: torch.device, **tta: Any) -> float:
    logits = predict_logits(model, split.images, device, **tta)
    return (logits.argmax(1) == torch.as_tensor(split.labels)).float().mean().item()


def append_line(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:  # one short line per write: appends from several processes stay whole
        fh.write(json.dumps(row) + "\n")


def run_job(job: dict[str, Any], data: str, profile: str, out: str, threads: int,
            save: str | None = None) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    reuse_freed_memory()  # as the training stage does
    section = with_overrides(read_params(profile)[f"train_{job['model']}"], job.get("set", {}))
    params = build_section(TrainParams, section, job["name"])
    seed_everything(params.seed)
    splits = load_prepared(data)
    device = select_device()
    model = build_model(params.model)
    started = time.perf_counter()

    def on_epoch(record: EpochRecord, evaluated: torch.nn.Module) -> None:  # the weights PublicTest measured
        append_line(Path(out), {"job": job["name"], **dataclasses.asdict(record),
                                "test_acc": accuracy(evaluated, splits["test"], device),
                                "elapsed_seconds": time.perf_counter() - started})

    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model, splits["train"], splits["val"], params, device, Path(tmp) / "resume.pt",
                     "sweep", None, on_epoch=on_epoch)
    model.load_state_dict(result.best_state)
    if save:  # the selected weights as a checkpoint the pipeline's loaders and `fer.predict` read
        save_checkpoint(model, Path(save) / f"{job['name']}.pt", best_epoch=result.best_epoch,
                        data=training_data(data))
    final = {"job": job["name"], "final": True, "device": str(device), "precision": result.precision,
             "set": job.get("set", {}), "epochs": params.epochs, "best_epoch": result.best_epoch,
             "seconds": time.perf_counter() - started}
    for name, tta in {"": {}, "_flip": {"flip_tta": True},
                      "_flip_shift2": {"flip_tta": True, "shift_tta": 2}}.items():
        final[f"val_acc{name}"] = accuracy(model, splits["val"], device, **tta)
        final[f"test_acc{name}"] = accuracy(model, splits["test"], device, **tta)
    append_line(Path(out), final)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/prepared", help="prepared FER2013 splits (train/val/test.npz)")
    parser.add_argument("--grid", default=str(ROOT / "benchmarks" / "fer2013_grid.yaml"), help="jobs to run")
    parser.add_argument("--profile", default=str(ROOT / "params" / "fer2013.yaml"), help="base params file")
    parser.add_argument("--workers", type=int, default=1, help="jobs run at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--only", nargs="*", help="run only these job names")
    parser.add_argument("--out", default="sweep.jsonl", help="JSON lines: one per epoch and one per finished job")
    parser.add_argument("--save", help="directory for each job's selected weights, <job>.pt (default: not kept)")
    args = parser.parse_args()
    jobs = yaml.safe_load(Path(args.grid).read_text())["jobs"]
    if args.only:
        jobs = [j for j in jobs if j["name"] in args.only]
    for job in jobs:  # fail on a bad key before any training starts
        build_section(TrainParams, with_overrides(read_params(args.profile)[f"train_{job['model']}"],
                                                  job.get("set", {})), job["name"])
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
    print(f"{len(jobs)} jobs on {select_device()}, {args.workers} at a time -> {args.out}", flush=True)
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        pending = [pool.apply_async(run_job, (job, args.data, args.profile, args.out, args.threads, args.save))
                   for job in jobs]
        for handle in pending:
            final = handle.get()
            print(f"{final['job']:>18}: best epoch {final['best_epoch']:3d}/{final['epochs']}  "
                  f"PublicTest {final['val_acc']:.4f} (flip {final['val_acc_flip']:.4f}, "
                  f"flip+shift {final['val_acc_flip_shift2']:.4f})  PrivateTest {final['test_acc']:.4f} "
                  f"(flip {final['test_acc_flip']:.4f}, flip+shift {final['test_acc_flip_shift2']:.4f})  "
                  f"{final['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
