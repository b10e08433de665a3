"""The files of the `evaluate` stage for one model: metrics, confusion matrices (figures, JSON
and DVC's per-image layout), predictions, the confusion analysis, the most confident mistakes and
a reliability diagram. Computes with `evaluation`, draws with `plots`, writes into a directory the
stage writes atomically; and the headline numbers that DVC declares as metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer import CLASS_NAMES, plots
from fer import evaluation as ev
from fer.data import Split
from fer.inference import predict_logits
from fer.io import save_figure, write_json, write_text
from fer.models import load_model
from fer.params import EvaluateParams
from fer.runtime import select_device

# What `dvc metrics show/diff` and `dvc exp show` compare across experiments; the per-class
# tables and everything else stay in results/ (and MLflow, and the report).
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "top2_accuracy", "nll", "ece")
MISTAKES_PER_PAIR = 4


def predictions_csv(split: Split, probs: np.ndarray) -> str:
    header = "index,source_index,true,predicted," + ",".join(f"p_{c}" for c in CLASS_NAMES)
    rows = [f"{i},{s},{CLASS_NAMES[t]},{CLASS_NAMES[p]}," + ",".join(f"{v:.5f}" for v in row)
            for i, (s, t, p, row) in enumerate(zip(split.source_index, split.labels, probs.argmax(1), probs))]
    return "\n".join([header, *rows]) + "\n"


def confusion_plot_csv(split: Split, probs: np.ndarray) -> str:
    """One row per image (actual, predicted): the layout of DVC's `confusion` template."""
    rows = [f"{CLASS_NAMES[t]},{CLASS_NAMES[p]}" for t, p in zip(split.labels, probs.argmax(1))]
    return "\n".join(["actual,predicted", *rows]) + "\n"


def most_confident_mistakes(split: Split, probs: np.ndarray, pairs: list[ev.ConfusedPair],
                            per_pair: int = MISTAKES_PER_PAIR) -> tuple[np.ndarray, list[str]]:
    """The most confident mistakes for each of the top confused pairs, with captions."""
    images, captions = [], []
    predicted = probs.argmax(1)
    for pair in pairs:
        rows = np.flatnonzero((split.labels == pair.true) & (predicted == pair.predicted))
        for row in rows[np.argsort(-probs[rows, pair.predicted])][:per_pair]:
            images.append(split.images[row])
            captions.append(f"#{row} {CLASS_NAMES[pair.true]}→{CLASS_NAMES[pair.predicted]}\n"
                            f"p={probs[row, pair.predicted]:.2f}")
    return np.array(images), captions


def headline(metrics: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per split, the headline numbers (plus `tta_accuracy` where test-time augmentation ran)."""
    out = {}
    for split, values in metrics.items():
        if split.endswith("_tta"):
            continue
        out[split] = {m: values[m] for m in HEADLINE_METRICS}
        if f"{split}_tta" in metrics:
            out[split]["tta_accuracy"] = metrics[f"{split}_tta"]["accuracy"]
    return out


def _split_outputs(name: str, split_name: str, split: Split, probs: np.ndarray, train_counts: np.ndarray,
                   params: EvaluateParams, out: Path, confusion_dir: Path) -> None:
    matrix = ev.confusion(split.labels, probs.argmax(1))
    write_json(out / f"confusion_{split_name}.json", {"classes": CLASS_NAMES, "matrix": matrix})
    write_text(confusion_dir / f"{name}_{split_name}.csv", confusion_plot_csv(split, probs))
    write_text(out / f"predictions_{split_name}.csv", predictions_csv(split, probs))
    save_figure(out / f"confusion_{split_name}.png",
                plots.confusion_figure(matrix, f"{name}: {split_name} (counts)"))
    save_figure(out / f"confusion_{split_name}_normalized.png",
                plots.confusion_figure(matrix, f"{name}: {split_name} (recall per true class)", True))
    if split_name != "val":
        return
    pairs = ev.top_confusions(matrix, params.top_confusions)
    write_text(out / "analysis.md",
               ev.confusion_analysis(name, split_name, matrix, train_counts, params.top_confusions))
    images, captions = most_confident_mistakes(split, probs, pairs)
    save_figure(out / "mistakes.png", plots.image_gallery(
        images, captions, f"{name}: most confident mistakes (validation)", columns=4))
    rel = ev.reliability(split.labels, probs, params.calibration_bins)
    save_figure(out / "reliability.png", plots.reliability_figure(
        rel.confidence, rel.accuracy, rel.count, rel.ece, f"{name}: validation calibration"))


def evaluation_outputs(name: str, models_dir: Path, splits: dict[str, Split], params: EvaluateParams,
                       out: Path, confusion_dir: Path) -> dict:
    """Evaluate one trained model on every split; write its files into `out` (including the
    full `metrics.json`) and its confusion plot data as `<confusion_dir>/<name>_<split>.csv` (one
    DVC plot per file of that directory); return the metrics per split (and per split with TTA)."""
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
        _split_outputs(name, split_name, split, probs, train_counts, params, out, confusion_dir)
    write_json(out / "metrics.json", metrics)
    return metrics
