"""Stage `evaluate`: metrics, confusion matrices, predictions, a confusion analysis and a
reliability diagram for every trained model and every split, attached to each model's MLflow run."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer import CLASS_NAMES, SPLITS, cli, tracking
from fer import evaluation as ev
from fer import plots
from fer.data import Split, load_prepared
from fer.io import atomic_dir, read_json, save_figure, write_json, write_text
from fer.models import load_model
from fer.params import EvaluateParams, load_section
from fer.training import predict_logits, select_device


def _predictions_csv(split: Split, probs: np.ndarray) -> str:
    header = "index,source_index,true,predicted," + ",".join(f"p_{c}" for c in CLASS_NAMES)
    rows = [f"{i},{s},{CLASS_NAMES[t]},{CLASS_NAMES[p]}," + ",".join(f"{v:.5f}" for v in row)
            for i, (s, t, p, row) in enumerate(zip(split.source_index, split.labels, probs.argmax(1), probs))]
    return "\n".join([header, *rows]) + "\n"


def _confusion_plot_csv(split: Split, probs: np.ndarray) -> str:
    """One row per image (actual, predicted): the layout of DVC's `confusion` template."""
    rows = [f"{CLASS_NAMES[t]},{CLASS_NAMES[p]}" for t, p in zip(split.labels, probs.argmax(1))]
    return "\n".join(["actual,predicted", *rows]) + "\n"


def _mistakes(split: Split, probs: np.ndarray, pairs: list[ev.ConfusedPair], per_pair: int = 4):
    """The most confident mistakes for each of the top confused pairs."""
    images, captions = [], []
    predicted = probs.argmax(1)
    for pair in pairs:
        rows = np.flatnonzero((split.labels == pair.true) & (predicted == pair.predicted))
        for row in rows[np.argsort(-probs[rows, pair.predicted])][:per_pair]:
            images.append(split.images[row])
            captions.append(f"#{row} {CLASS_NAMES[pair.true]}→{CLASS_NAMES[pair.predicted]}\n"
                            f"p={probs[row, pair.predicted]:.2f}")
    return np.array(images), captions


def evaluate_model(name: str, models_dir: Path, splits: dict[str, Split], params: EvaluateParams,
                   out: Path) -> dict:
    device = select_device()
    model = load_model(models_dir / name / "model.pt", device)
    metrics: dict = {}
    train_counts = np.array(splits["train"].class_counts())
    for split_name, split in splits.items():
        probs = ev.softmax(predict_logits(model, split.images, device, params.batch_size).numpy())
        metrics[split_name] = ev.classification_metrics(split.labels, probs, params.calibration_bins)
        if params.tta_flip or params.tta_shift:
            tta = ev.softmax(predict_logits(model, split.images, device, params.batch_size,
                                            flip_tta=params.tta_flip, shift_tta=params.tta_shift).numpy())
            metrics[f"{split_name}_tta"] = ev.classification_metrics(split.labels, tta, params.calibration_bins)
        matrix = ev.confusion(split.labels, probs.argmax(1))
        write_json(out / f"confusion_{split_name}.json", {"classes": CLASS_NAMES, "matrix": matrix})
        write_text(out / f"confusion_{split_name}.csv", _confusion_plot_csv(split, probs))
        write_text(out / f"predictions_{split_name}.csv", _predictions_csv(split, probs))
        save_figure(out / f"confusion_{split_name}.png",
                    plots.confusion_figure(matrix, f"{name}: {split_name} (counts)"))
        save_figure(out / f"confusion_{split_name}_normalized.png",
                    plots.confusion_figure(matrix, f"{name}: {split_name} (recall per true class)", True))
        if split_name == "val":
            pairs = ev.top_confusions(matrix, params.top_confusions)
            write_text(out / "analysis.md", ev.confusion_analysis(name, split_name, matrix, train_counts,
                                                                  params.top_confusions))
            images, captions = _mistakes(split, probs, pairs)
            save_figure(out / "mistakes.png", plots.image_gallery(
                images, captions, f"{name}: most confident mistakes (validation)", columns=4))
            rel = ev.reliability(split.labels, probs, params.calibration_bins)
            save_figure(out / "reliability.png", plots.reliability_figure(
                rel.confidence, rel.accuracy, rel.count, rel.ece, f"{name}: validation calibration"))
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__, reads_models=True)
    parser.add_argument("--models", nargs="+", default=["cnn4", "cnn3"], help="models to evaluate")
    parser.add_argument("--out", default="results/evaluate", help="output directory")
    parser.add_argument("--metrics", default="metrics", help="directory of the <model>.json metrics files")
    args = parser.parse_args(argv)
    params = load_section(EvaluateParams, "evaluate", args.params)
    splits = load_prepared(args.data, SPLITS)
    with atomic_dir(args.out) as tmp:
        results = {name: evaluate_model(name, Path(args.models_dir), splits, params, tmp / name)
                   for name in args.models}
    for name, metrics in results.items():
        write_json(Path(args.metrics) / f"{name}.json", metrics)
        print(f"{name}: " + "  ".join(f"{s} acc {metrics[s]['accuracy']:.4f}" for s in SPLITS))
        run = read_json(Path(args.models_dir) / name / "run.json")
        with tracking.model_run(run["experiment"], name, run["run_id"]):
            for split_name, values in metrics.items():
                tracking.log_metrics({k: v for k, v in values.items() if k != "per_class"}, prefix=f"{split_name}_")
            tracking.log_artifacts(Path(args.out) / name, "evaluate")
            tracking.log_artifact(Path(args.metrics) / f"{name}.json", "evaluate")


if __name__ == "__main__":
    cli.run(main)
