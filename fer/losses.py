"""Softmax cross-entropy with its analytic gradient, in numpy: the study's question 6.

For logits z, a target distribution y (one-hot, or smoothed: (1 - eps) * onehot + eps / K) and
L = -sum_i y_i log softmax(z)_i, the gradient is dL/dz_i = softmax(z)_i - y_i, because
d log softmax(z)_i / dz_j = [i == j] - softmax(z)_j and sum_i y_i = 1.
Computed with log-sum-exp, so logits of +-1000 neither overflow nor lose the gradient.
"""
from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def target_distribution(targets: np.ndarray, n_classes: int, label_smoothing: float = 0.0) -> np.ndarray:
    """Class indices (N,) or distributions (N, K) -> smoothed distributions (N, K)."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        y = np.zeros((len(targets), n_classes))
        y[np.arange(len(targets)), targets] = 1.0
    else:
        y = targets.astype(float)
    return (1 - label_smoothing) * y + label_smoothing / n_classes


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray,
                          label_smoothing: float = 0.0) -> tuple[float, np.ndarray]:
    """Mean cross-entropy over the batch and its gradient with respect to the logits,
    (softmax(z) - y) / N."""
    logits = np.asarray(logits, dtype=np.float64)
    y = target_distribution(targets, logits.shape[1], label_smoothing)
    log_p = log_softmax(logits)
    loss = float(-(y * log_p).sum(axis=1).mean())
    return loss, (np.exp(log_p) - y) / len(logits)
