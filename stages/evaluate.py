"""Stage `evaluate`: metrics, confusion matrices, predictions, a confusion analysis and a
reliability diagram for every trained model and every split. Each model gets an MLflow run of its
own (`evaluate-<model>`, a child of its training run) with this stage's params, the splits as
dataset inputs and every metric tied to the logged model and its split. The headline numbers per
model and split go to metrics/<model>/<split>.json for DVC."""
from __future__ import annotations

from pathlib import Path

from fer import SPLITS, cli, tracking
from fer.data import data_ref, load_prepared
from fer.evaluation_outputs import evaluation_outputs, headline
from fer.io import atomic_dir, write_json
from fer.params import EvaluateParams, TrackingParams, load_section, section_dict
from fer.runtime import reuse_freed_memory


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__, reads_models=True)
    parser.add_argument("--out", default="results/evaluate", help="output directory")
    parser.add_argument("--confusion", default="results/confusion",
                        help="directory of the <model>_<split>.csv confusion plots")
    parser.add_argument("--metrics", default="metrics/evaluate", help="directory of the <model>/<split>.json metrics")
    args = parser.parse_args(argv)
    tracking.check_reachable()
    reuse_freed_memory()  # a batch's activations are reused, not page-faulted in again: about 2x faster
    params = load_section(EvaluateParams, "evaluate", args.params)
    names = cli.study_models(args)
    splits = load_prepared(args.data, SPLITS)
    with atomic_dir(args.out) as tmp, atomic_dir(args.confusion) as confusion, atomic_dir(args.metrics) as metrics_dir:
        results = {name: evaluation_outputs(name, Path(args.models_dir), splits, params, tmp / name, confusion)
                   for name in names}
        for name, metrics in results.items():
            for split, values in headline(metrics).items():
                write_json(metrics_dir / name / f"{split}.json", values)
    for name, metrics in results.items():
        print(f"{name}: " + "  ".join(f"{s} acc {metrics[s]['accuracy']:.4f}" for s in SPLITS))

    experiment = tracking.experiment_name(load_section(TrackingParams, "tracking", args.params).experiment)
    refs = {split: data_ref(args.data, split) for split in SPLITS}

    def log_outputs(model: tracking.TrainedModel) -> None:
        datasets = {split: (ref, tracking.dataset(ref, splits[split].images, splits[split].labels))
                    for split, ref in refs.items()}
        tracking.log_datasets(tracking.active_run_id(), datasets)
        for split, values in results[model.name].items():  # "<split>_tta": the split's test-time views
            tracking.log_metrics({k: v for k, v in values.items() if k != "per_class"}, prefix=f"{split}_",
                                 model_id=model.model_id, dataset=datasets[split.removesuffix("_tta")][1])
        tracking.log_artifacts(Path(args.out) / model.name, "evaluate")

    tracking.stage_runs(experiment, "evaluate", Path(args.models_dir), names,
                        section_dict("evaluate", args.params), log_outputs)


if __name__ == "__main__":
    cli.run(main)
