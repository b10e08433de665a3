"""Stage `visualize`: saliency maps (five methods, checked by sanity numbers) for one model and
filter atlases of chosen conv layers for another, with the raw arrays and image indices. Each
explained model gets an MLflow run of its own (`visualize-<model>`, a child of its training run)
with this stage's params; the sanity numbers are tied to the logged model and the validation split."""
from __future__ import annotations

from pathlib import Path

from fer import cli, tracking
from fer.data import data_ref, load_split
from fer.io import atomic_dir, write_json
from fer.params import TrackingParams, VisualizeParams, load_section, section_dict
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

    experiment = tracking.experiment_name(load_section(TrackingParams, "tracking", args.params).experiment)
    ref = data_ref(args.data, "val")

    def log_outputs(model: tracking.TrainedModel) -> None:
        tracking.log_artifacts(Path(args.out) / model.name, "visualize")
        if model.name == params.saliency_model:
            validation = tracking.dataset(ref, val.images, val.labels)
            tracking.log_datasets(tracking.active_run_id(), {"val": (ref, validation)})
            tracking.log_metrics(sanity, prefix="saliency_", model_id=model.model_id, dataset=validation)

    tracking.stage_runs(experiment, "visualize", models_dir, sorted({params.saliency_model, params.filters_model}),
                        section_dict("visualize", args.params), log_outputs)
    print(f"wrote {args.out}: saliency of {params.saliency_model}, filters of {params.filters_model}")


if __name__ == "__main__":
    cli.run(main)
