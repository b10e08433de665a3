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


def gradient_check(seed: int = 0, n: int = 16, classes: int = 7) -> dict[str, float]:
    """The evidence that the gradient is right: max |analytic - autograd| and |analytic - central
    finite differences| on random float64 logits, and |analytic - autograd| on logits of +-1000
    where a naive softmax overflows (the report prints these numbers)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    logits, labels = rng.normal(size=(n, classes)) * 3, rng.integers(0, classes, size=n)
    _, analytic = softmax_cross_entropy(logits, labels)

    def autograd(z: np.ndarray) -> np.ndarray:
        t = torch.tensor(z, requires_grad=True)
        F.cross_entropy(t, torch.tensor(labels)).backward()
        return t.grad.numpy()

    h = 1e-6
    numeric = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (softmax_cross_entropy(up, labels)[0] - softmax_cross_entropy(down, labels)[0]) / (2 * h)
    large = np.sign(rng.normal(size=(n, classes))) * 1000.0
    _, analytic_large = softmax_cross_entropy(large, labels)
    return {"max_error_vs_autograd": float(np.abs(analytic - autograd(logits)).max()),
            "max_error_vs_finite_differences": float(np.abs(analytic - numeric).max()),
            "max_error_vs_autograd_logits_1000": float(np.abs(analytic_large - autograd(large)).max())}
