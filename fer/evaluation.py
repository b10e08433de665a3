"""Metrics, confusion matrices and the automatic confusion analysis (pure numpy/scikit-learn)."""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special
from scipy.stats import spearmanr
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from fer import CLASS_NAMES, NUM_CLASSES

LABELS = list(range(NUM_CLASSES))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of each row of logits (N, K)."""
    return special.softmax(logits, axis=1)


@dataclasses.dataclass(frozen=True)
class Reliability:
    """Per-bin mean confidence, accuracy and count of a reliability diagram."""
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        total = self.count.sum()
        return float(np.sum(self.count * np.abs(self.accuracy - self.confidence)) / total) if total else 0.0


def reliability(labels: np.ndarray, probs: np.ndarray, n_bins: int) -> Reliability:
    """Equal-width confidence bins over (0, 1]; empty bins have count 0."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    safe = np.maximum(count, 1)
    return Reliability(np.bincount(bins, confidence, n_bins) / safe,
                       np.bincount(bins, correct.astype(float), n_bins) / safe, count)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict:
    """Overall and per-class metrics of one split. Classes absent from `labels` still get a row
    (recall 0 by convention, support 0) and are left out of balanced accuracy."""
    predicted = probs.argmax(axis=1)
    top2 = np.argsort(-probs, axis=1)[:, :2]
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=LABELS, zero_division=0)
    present = support > 0
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1_score(labels, predicted, labels=LABELS, average="macro", zero_division=0)),
        "top2_accuracy": float(np.mean((top2 == labels[:, None]).any(axis=1))),
        "nll": float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)))),
        "ece": reliability(labels, probs, n_bins).ece,
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(CLASS_NAMES, precision, recall, f1, support)},
    }


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    return confusion_matrix(labels, predicted, labels=LABELS)


def row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its total (per-true-class recall view); empty rows stay 0."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)


@dataclasses.dataclass(frozen=True)
class ConfusedPair:
    true: int
    predicted: int
    count: int
    rate: float  # share of the true class's images predicted as `predicted`


def top_confusions(matrix: np.ndarray, k: int) -> list[ConfusedPair]:
    """The k off-diagonal cells with the highest row-normalised rate (ties: more images first)."""
    rates = row_normalise(matrix)
    cells = [ConfusedPair(t, p, int(matrix[t, p]), float(rates[t, p]))
             for t in range(len(matrix)) for p in range(len(matrix)) if t != p and matrix[t, p] > 0]
    return sorted(cells, key=lambda c: (-c.rate, -c.count, c.true, c.predicted))[:k]


def asymmetric_pairs(matrix: np.ndarray, k: int, min_ratio: float = 2.0) -> list[tuple[ConfusedPair, ConfusedPair]]:
    """Pairs (a->b, b->a) among the top confusions where one direction's rate is at least
    `min_ratio` times the other's."""
    rates = row_normalise(matrix)
    found = []
    for pair in top_confusions(matrix, k):
        back = ConfusedPair(pair.predicted, pair.true, int(matrix[pair.predicted, pair.true]),
                            float(rates[pair.predicted, pair.true]))
        if pair.rate >= min_ratio * back.rate:
            found.append((pair, back))
    return found


def recall_frequency_correlation(recall: np.ndarray, train_counts: np.ndarray) -> float:
    """Spearman rank correlation between per-class recall and training-set class frequency."""
    if np.ptp(recall) == 0 or np.ptp(train_counts) == 0:
        return 0.0
    return float(spearmanr(recall, train_counts).statistic)


def confusion_analysis(model: str, split: str, matrix: np.ndarray, train_counts: np.ndarray, k: int) -> str:
    """A Markdown summary of what the model confuses, every number computed from `matrix`."""
    recall = np.diag(row_normalise(matrix))
    support = matrix.sum(axis=1)
    share = train_counts / max(train_counts.sum(), 1)
    present = np.flatnonzero(support > 0)
    order = present[np.argsort(-recall[present], kind="stable")]
    best, worst = order[0], order[-1]
    rho = recall_frequency_correlation(recall[present], train_counts[present])
    lines = [f"## Confusion analysis: {model} ({split} split)", "",
             f"- Best recognised: **{CLASS_NAMES[best]}**, recall {recall[best]:.1%} "
             f"({share[best]:.1%} of the training data).",
             f"- Worst recognised: **{CLASS_NAMES[worst]}**, recall {recall[worst]:.1%} "
             f"({share[worst]:.1%} of the training data).", "",
             "| true class | recall | support | share of training data |", "|---|---:|---:|---:|"]
    lines += [f"| {CLASS_NAMES[c]} | {recall[c]:.1%} | {support[c]} | {share[c]:.1%} |" for c in order]
    lines += ["", "Most confused pairs (share of the true class's images given the wrong label):", ""]
    lines += [f"{i}. {CLASS_NAMES[p.true]} → {CLASS_NAMES[p.predicted]}: {p.rate:.1%} of "
              f"{CLASS_NAMES[p.true]} {split} images ({p.count} of {support[p.true]})"
              for i, p in enumerate(top_confusions(matrix, k), start=1)]
    asym = asymmetric_pairs(matrix, k)
    if asym:
        lines += ["", "Asymmetric confusions:", ""]
        lines += [f"- {CLASS_NAMES[a.true]} → {CLASS_NAMES[a.predicted]} {a.rate:.1%}, but "
                  f"{CLASS_NAMES[b.true]} → {CLASS_NAMES[b.predicted]} only {b.rate:.1%}" for a, b in asym]
    trend = ("tracks" if rho >= 0.5 else "partly tracks" if rho >= 0.2 else "does not track")
    lines += ["", f"Per-class recall {trend} training-set class frequency "
              f"(Spearman ρ = {rho:.2f} over {len(present)} classes).", ""]
    return "\n".join(lines)
