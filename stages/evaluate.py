"""Stage `evaluate`: metrics, confusion matrices, predictions, a confusion analysis and a
reliability diagram for every trained model and every split, attached to each model's MLflow run.
The headline numbers per model and split go to metrics/<model>/<split>.json for DVC."""
from __future__ import annotations

from pathlib import Path

from fer import SPLITS, cli, tracking
from fer.data import load_prepared
from fer.evaluation_outputs import evaluation_outputs, headline
from fer.io import atomic_dir, write_json
from fer.params import EvaluateParams, load_section


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__, reads_models=True)
    parser.add_argument("--models", nargs="+", default=["cnn4", "cnn3"], help="models to evaluate")
    parser.add_argument("--out", default="results/evaluate", help="output directory")
    parser.add_argument("--metrics", default="metrics", help="directory of the <model>/<split>.json metrics files")
    args = parser.parse_args(argv)
    params = load_section(EvaluateParams, "evaluate", args.params)
    tracking.check_reachable()
    splits = load_prepared(args.data, SPLITS)
    with atomic_dir(args.out) as tmp:
        results = {name: evaluation_outputs(name, Path(args.models_dir), splits, params, tmp / name)
                   for name in args.models}
    for name, metrics in results.items():
        for split, values in headline(metrics).items():
            write_json(Path(args.metrics) / name / f"{split}.json", values)
        print(f"{name}: " + "  ".join(f"{s} acc {metrics[s]['accuracy']:.4f}" for s in SPLITS))

    def log_outputs(name: str) -> None:
        for split_name, values in results[name].items():
            tracking.log_metrics({k: v for k, v in values.items() if k != "per_class"}, prefix=f"{split_name}_")
        tracking.log_artifacts(Path(args.out) / name, "evaluate")

    tracking.attach_to_model_runs(Path(args.models_dir), args.models, log_outputs)


if __name__ == "__main__":
    cli.run(main)
