"""Stage `prepare`: read the data source named in params.yaml (or generate the synthetic faces)
and write compact per-split arrays, class counts and a data-quality report."""
from __future__ import annotations

from pathlib import Path

from fer import cli, tracking
from fer.data import save_split
from fer.data.prepare import class_counts, prepare
from fer.io import atomic_dir, write_json
from fer.params import PrepareParams, TrackingParams, load_section, section_dict


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__, reads_data=False)
    parser.add_argument("--out", default="data/prepared", help="output directory")
    args = parser.parse_args(argv)
    params = load_section(PrepareParams, "prepare", args.params)
    experiment = tracking.experiment_name(load_section(TrackingParams, "tracking", args.params).experiment)
    tracking.check_reachable()
    tracking.preload()  # overlaps reading the data
    splits, report = prepare(params, Path(args.params).resolve().parent)
    counts = class_counts(splits)
    with atomic_dir(args.out) as tmp:
        for name, split in splits.items():
            save_split(tmp / f"{name}.npz", split)
        write_json(tmp / "counts.json", counts)
        write_json(tmp / "quality.json", report)
    for name, row in counts.items():
        print(f"{name:>10}: {row['total']:6d} images  " + " ".join(f"{k}={v}" for k, v in row.items() if k != "total"))
    with tracking.new_run(experiment, "prepare", "prepare", params=section_dict("prepare", args.params)):
        tracking.log_artifact(Path(args.out) / "quality.json")
        tracking.log_artifact(Path(args.out) / "counts.json")


if __name__ == "__main__":
    cli.run(main)
