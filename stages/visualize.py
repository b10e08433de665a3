"""Stage `visualize`: saliency maps (five methods, checked by sanity numbers) for one model and
filter atlases of chosen conv layers for another, with the raw arrays and image indices,
attached to each model's MLflow run."""
from __future__ import annotations

from pathlib import Path

from fer import cli, tracking
from fer.data import load_split
from fer.io import atomic_dir, write_json
from fer.params import VisualizeParams, load_section
from fer.training import seed_everything
from fer.visual_outputs import filter_outputs, saliency_outputs, sanity_headline


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__, reads_models=True)
    parser.add_argument("--out", default="results/visualize", help="output directory")
    parser.add_argument("--metrics", default="metrics", help="directory of the saliency/<method>.json metrics files")
    args = parser.parse_args(argv)
    params = load_section(VisualizeParams, "visualize", args.params)
    tracking.check_reachable()
    seed_everything(params.seed)
    val = load_split(Path(args.data) / "val.npz")
    models_dir = Path(args.models_dir)
    with atomic_dir(args.out) as tmp:
        sanity = saliency_outputs(params.saliency_model, models_dir, val, params, tmp / params.saliency_model)
        filter_outputs(params.filters_model, models_dir, val, params, tmp / params.filters_model)
    for method, values in sanity_headline(sanity).items():
        write_json(Path(args.metrics) / "saliency" / f"{method}.json", values)

    def log_outputs(name: str) -> None:
        tracking.log_artifacts(Path(args.out) / name, "visualize")
        if name == params.saliency_model:
            tracking.log_metrics(sanity, prefix="saliency_")

    tracking.attach_to_model_runs(models_dir, sorted({params.saliency_model, params.filters_model}), log_outputs)
    print(f"wrote {args.out}: saliency of {params.saliency_model}, filters of {params.filters_model}")


if __name__ == "__main__":
    cli.run(main)
