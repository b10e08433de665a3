"""Stage `train_<model>`: train one model on the prepared data, resuming a killed run from its
last epoch, and write the best checkpoint, the per-epoch history and the layer table."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from fer import IMAGE_SIZE, cli, tracking
from fer.data import data_ref, load_prepared, training_data
from fer.io import atomic_dir, atomic_path, write_json, write_text
from fer.models import Network, build_model, layer_table, layer_table_markdown, save_checkpoint
from fer.params import TrackingParams, TrainParams, load_section, section_dict
from fer.runtime import resolve_precision, reuse_freed_memory, seed_everything, select_device
from fer.training import EpochRecord, FitResult, abandoned_run_id, fingerprint, fit, load_resume_state


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", required=True, help="model name: reads params section train_<model>")
    parser.add_argument("--out", help="output directory (default models/<model>)")
    parser.add_argument("--history", help="per-epoch history CSV, a DVC plot (default results/history/<model>.csv)")
    parser.add_argument("--checkpoints", default="checkpoints", help="resume-state directory (not a DVC output)")
    args = parser.parse_args(argv)
    section = f"train_{args.model}"
    params = load_section(TrainParams, section, args.params)
    settings = load_section(TrackingParams, "tracking", args.params)
    experiment = tracking.experiment_name(settings.experiment)
    tracking.check_reachable()
    out = Path(args.out or f"models/{args.model}")
    history = Path(args.history or f"results/history/{args.model}.csv")
    seed_everything(params.seed)
    reuse_freed_memory()
    device = select_device()
    splits = load_prepared(args.data, ("train", "val"))
    job = fingerprint(section_dict(section, args.params),
                      [Path(args.data) / "train.npz", Path(args.data) / "val.npz"])
    checkpoint = Path(args.checkpoints) / f"{args.model}.pt"
    resume = load_resume_state(checkpoint, job)
    if resume:
        print(f"resuming {args.model} after epoch {len(resume.history)} from {checkpoint}")
    elif abandoned := abandoned_run_id(checkpoint, job):
        tracking.end_run(abandoned, "KILLED")  # its params or data changed: it will never be continued
    model = build_model(params.model)
    precision = resolve_precision(params.precision, device)
    print(f"training {args.model} on {device} in {precision} "
          f"({len(splits['train'])} train / {len(splits['val'])} val images)")

    run_id = tracking.open_run(experiment, args.model, resume.run_id if resume else None,
                               params=section_dict(section, args.params) | {"precision_used": precision})
    if not resume:
        refs = {name: data_ref(args.data, name) for name in splits}
        tracking.log_datasets(run_id, {name: (ref, tracking.dataset(ref, splits[name].images, splits[name].labels))
                                       for name, ref in refs.items()})
    epoch_log = tracking.EpochLog(run_id, resume.records() if resume else [])
    try:
        with tracking.system_metrics(run_id, resumed=resume is not None):
            result = fit(model, splits["train"], splits["val"], params, device, checkpoint, job, run_id, resume,
                         on_epoch=lambda record, _evaluated: epoch_log(record))
    except BaseException as error:  # diverged, out of memory, Ctrl-C: the run says so (a rerun resumes it)
        tracking.end_run(run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    model.load_state_dict(result.best_state)
    record = {"run_id": run_id, "experiment": experiment, "best_epoch": result.best_epoch,
              "best_val_acc": result.best_val_acc, "precision": result.precision}
    write_outputs(out, history, model, result, record, args.model, training_data(args.data))
    unsent = checkpoint.with_suffix(".unsent.json")
    try:
        epoch_log.send_all()
        with tracking.model_run(experiment, args.model, run_id):
            tracking.log_metrics({"best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch})
            tracking.log_artifact(history, "training", name="history.csv")
            for name in ("layers.json", "layers.md"):
                tracking.log_artifact(out / name, "training")
            example = np.random.default_rng(0).random((2, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
            info = tracking.log_torch_model(model, out / "model.pt", example)
            tracking.register(settings.registered_model(args.model),
                                        {"checkpoint_sha256": tracking.file_sha256(out / "model.pt")},
                                        lambda: info.model_uri)
    except tracking.TrackingError as error:
        # The outputs are written and the resume state keeps every epoch, so a rerun sends what is
        # missing without training again; the unsent records are listed for the reader.
        write_json(unsent, {"tracking_uri": tracking.tracking_uri(), "run_id": run_id,
                            "unsent_epochs": [dataclasses.asdict(r) for r in epoch_log.pending]})
        raise type(error)(
            f"{error}. Outputs are written; {len(epoch_log.pending)} epoch record(s) (listed in {unsent}) and the "
            f"final logging of run {run_id} are not sent; rerun `dvc repro train_{args.model}` when the store "
            f"answers to send them from {checkpoint} (training is not repeated)") from None
    write_json(out / "run.json", record | {"model_id": info.model_id})
    checkpoint.unlink(missing_ok=True)
    unsent.unlink(missing_ok=True)
    print(f"{args.model}: best val acc {result.best_val_acc:.4f} at epoch {result.best_epoch}; wrote {out}")


def write_outputs(out: Path, history: Path, model: Network, result: FitResult, record: dict,
                  name: str, data: dict[str, str]) -> None:
    """The stage's DVC outputs: the model directory as one atomic swap, the history beside the
    other models' (one DVC plot per file of the directory); `run.json` gets the logged model's
    id once the store has it."""
    rows = layer_table(model)
    with atomic_path(history) as history_file, open(history_file, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in dataclasses.fields(EpochRecord)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in result.history)
    with atomic_dir(out) as tmp:
        save_checkpoint(model, tmp / "model.pt", best_epoch=result.best_epoch, data=data)
        write_json(tmp / "layers.json", {"layers": [dataclasses.asdict(r) for r in rows],
                                         "total_parameters": sum(r.parameters for r in rows)})
        write_text(tmp / "layers.md", layer_table_markdown(rows, f"{name} layers"))
        write_json(tmp / "run.json", record)


if __name__ == "__main__":
    cli.run(main)
