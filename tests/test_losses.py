"""dL/dz = softmax(z) - y, checked against autograd and central finite differences."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer.losses import softmax_cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_matches_autograd(smoothing: float, scale: float) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 7)) * scale
    labels = rng.integers(0, 7, size=6)
    loss, grad = softmax_cross_entropy(logits, labels, smoothing)
    z = torch.tensor(logits, requires_grad=True)
    reference = F.cross_entropy(z, torch.tensor(labels), label_smoothing=smoothing)
    reference.backward()
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(reference.item(), rel=1e-12)
    np.testing.assert_allclose(grad, z.grad.numpy(), atol=1e-12)


def test_matches_finite_differences_and_accepts_one_hot() -> None:
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(4, 7)), rng.integers(0, 7, size=4)
    _, grad = softmax_cross_entropy(logits, labels)
    numeric = np.zeros_like(logits)
    h = 1e-6
    for index in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (softmax_cross_entropy(up, labels)[0] - softmax_cross_entropy(down, labels)[0]) / (2 * h)
    assert np.max(np.abs(grad - numeric)) < 1e-8
    _, grad_one_hot = softmax_cross_entropy(logits, np.eye(7)[labels])
    np.testing.assert_allclose(grad_one_hot, grad)


def test_extreme_logits_where_a_naive_version_overflows() -> None:
    logits = np.array([[1000.0, -1000.0, 0.0, 0, 0, 0, 0]])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        naive = -np.log(np.exp(logits[0, 1]) / np.exp(logits).sum())
    assert not np.isfinite(naive)
    loss, grad = softmax_cross_entropy(logits, np.array([1]))
    assert loss == pytest.approx(2000.0)
    np.testing.assert_allclose(grad[0], [1, -1, 0, 0, 0, 0, 0], atol=1e-12)


def test_the_reports_gradient_check_finds_agreement() -> None:
    """The numbers the report prints: analytic against autograd and finite differences."""
    from fer.losses import gradient_check

    errors = gradient_check()
    assert set(errors) == {"max_error_vs_autograd", "max_error_vs_finite_differences",
                           "max_error_vs_autograd_logits_1000"}
    assert errors["max_error_vs_autograd"] < 1e-12 and errors["max_error_vs_autograd_logits_1000"] < 1e-12
    assert errors["max_error_vs_finite_differences"] < 1e-6
