"""Stage `visualize`: for every model of the study, saliency maps of every registered attribution
method (checked by sanity numbers) and filter atlases of chosen conv layers, with the raw arrays
and image indices. Each model gets an MLflow run of its own (`visualize-<model>`, a child of its
training run) with this stage's params; the sanity numbers are tied to the logged model and the
validation split, and written as DVC metrics, one file per model and method."""
from __future__ import annotations

from pathlib import Path

from fer import cli, tracking
from fer.data import data_ref, load_split
from fer.io import atomic_dir, write_json
from fer.models import load_model
from fer.params import TrackingParams, VisualizeParams, load_section, section_dict
from fer.runtime import reuse_freed_memory, seed_everything
from fer.visual_outputs import filter_outputs, saliency_outputs


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__, reads_models=True)
    parser.add_argument("--out", default="results/visualize", help="output directory")
    parser.add_argument("--metrics", default="metrics/saliency",
                        help="directory of the <model>/<method>.json sanity metrics")
    args = parser.parse_args(argv)
    tracking.check_reachable()
    params = load_section(VisualizeParams, "visualize", args.params)
    names = cli.study_models(args)
    seed_everything(params.seed)
    reuse_freed_memory()  # a batch's activations are reused, not page-faulted in again
    val = load_split(Path(args.data) / "val.npz")
    models_dir = Path(args.models_dir)
    sanity = {}
    with atomic_dir(args.out) as tmp, atomic_dir(args.metrics) as metrics:
        for name in names:
            model = load_model(models_dir / name / "model.pt")
            sanity[name] = saliency_outputs(model, name, val, params, tmp / name)
            filter_outputs(model, name, val, params, tmp / name)
            for method, values in sanity[name].methods.items():
                write_json(metrics / name / f"{method}.json", values.headline())

    experiment = tracking.experiment_name(load_section(TrackingParams, "tracking", args.params).experiment)
    ref = data_ref(args.data, "val")
    validation = tracking.dataset(ref, val.images, val.labels)

    def log_outputs(model: tracking.TrainedModel) -> None:
        tracking.log_artifacts(Path(args.out) / model.name, "visualize")
        tracking.log_datasets(tracking.active_run_id(), {"val": (ref, validation)})
        tracking.log_metrics(sanity[model.name].as_dict()["methods"], prefix="saliency_", model_id=model.model_id,
                             dataset=validation)

    tracking.stage_runs(experiment, "visualize", models_dir, names, section_dict("visualize", args.params),
                        log_outputs)
    print(f"wrote {args.out}: saliency maps and filters of {', '.join(names)}")


if __name__ == "__main__":
    cli.run(main)
