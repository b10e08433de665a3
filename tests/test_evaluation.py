"""Metrics against direct computations on hand-made predictions; the confusion analysis."""
from __future__ import annotations

import numpy as np
import pytest

from fer import evaluation as ev

LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 5, 6, 6])
PRED = np.array([0, 0, 1, 3, 0, 0, 2, 2, 5, 3, 3, 3, 4, 2, 6, 4])


def one_hot_probs(predicted: np.ndarray, confidence: float = 0.7) -> np.ndarray:
    probs = np.full((len(predicted), 7), (1 - confidence) / 6)
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def test_metrics_match_direct_computation() -> None:
    probs = one_hot_probs(PRED)
    probs[0, 1] = 0.2  # second choice of image 0 is class 1
    probs[0] /= probs[0].sum()
    m = ev.classification_metrics(LABELS, probs, n_bins=15)
    assert m["accuracy"] == pytest.approx(np.mean(LABELS == PRED))
    recalls = [np.mean(PRED[LABELS == c] == c) for c in range(7)]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    precisions = [np.mean(LABELS[PRED == c] == c) if (PRED == c).any() else 0.0 for c in range(7)]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precisions, recalls)]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["per_class"]["angry"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["disgust"]["support"] == 2
    top2 = np.argsort(-probs, axis=1)[:, :2]
    assert m["top2_accuracy"] == pytest.approx(np.mean([label in t for label, t in zip(LABELS, top2)]))
    assert m["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(16), LABELS])))
    # Image 0 (confidence 0.7/1.15, correct) sits alone in a lower bin; the other 15 share 0.7.
    correct = LABELS == PRED
    expected_ece = (abs(1 - probs[0].max()) * 1 + abs(correct[1:].mean() - 0.7) * 15) / 16
    assert m["ece"] == pytest.approx(expected_ece)


def test_absent_class_still_has_a_row() -> None:
    labels, pred = np.array([0, 1, 1]), np.array([0, 1, 0])
    m = ev.classification_metrics(labels, one_hot_probs(pred))
    assert set(m["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert m["per_class"]["neutral"]["support"] == 0
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)


def test_confusion_ranking_and_asymmetry() -> None:
    matrix = ev.confusion(LABELS, PRED)
    assert matrix.sum() == 16 and matrix[1, 0] == 2
    pairs = ev.top_confusions(matrix, 3)
    # disgust->angry 2/2 = 100%, surprise->fear 1/1 = 100%, then neutral->sad 1/2 = 50%.
    assert [(p.true, p.predicted, p.count) for p in pairs] == [(1, 0, 2), (5, 2, 1), (6, 4, 1)]
    assert pairs[0].rate == 1.0 and pairs[2].rate == 0.5
    asym = ev.asymmetric_pairs(matrix, 3)
    assert (asym[0][0].true, asym[0][0].predicted, asym[0][1].rate) == (1, 0, pytest.approx(0.25))


def test_analysis_text_states_the_numbers() -> None:
    matrix = ev.confusion(LABELS, PRED)
    train_counts = np.array([400, 40, 400, 700, 480, 300, 500])
    text = ev.confusion_analysis("cnn4", "val", matrix, train_counts, k=3)
    assert "disgust → angry: 100.0% of disgust val images (2 of 2)" in text
    # disgust and surprise both have recall 0; ties keep class order, so surprise comes last.
    share = 300 / train_counts.sum()
    assert f"Worst recognised: **surprise**, recall 0.0% ({share:.1%} of the training data)" in text
    assert "Best recognised: **happy**, recall 100.0%" in text
    rho = ev.recall_frequency_correlation(np.diag(ev.row_normalise(matrix)), train_counts)
    assert f"ρ = {rho:.2f}" in text


def test_reliability_bins() -> None:
    probs = np.array([[0.95, 0.05] + [0] * 5, [0.55, 0.45] + [0] * 5])
    rel = ev.reliability(np.array([0, 1]), probs, 10)
    assert rel.count[9] == 1 and rel.count[5] == 1
    assert rel.ece == pytest.approx((abs(1 - 0.95) + abs(0 - 0.55)) / 2)


def test_flip_tta_averages_the_logits_of_image_and_mirror() -> None:
    import torch

    from fer.inference import predict_logits
    from fer.models import build_model, model_params

    torch.manual_seed(0)
    model = build_model(model_params({"arch": "cnn4", "batch_norm": False, "dropout_conv": 0.0,
                                              "dropout_fc": 0.0, "fc_hidden": 16}, "model")).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(5, 48, 48), dtype=np.uint8)
    plain = predict_logits(model, images, torch.device("cpu"))
    mirrored = predict_logits(model, images[:, :, ::-1].copy(), torch.device("cpu"))
    tta = predict_logits(model, images, torch.device("cpu"), flip_tta=True)
    torch.testing.assert_close(tta, (plain + mirrored) / 2, rtol=1e-5, atol=1e-5)


def test_shift_tta_averages_the_image_and_its_four_edge_padded_shifts() -> None:
    import torch

    from fer.inference import predict_logits
    from fer.models import build_model, model_params

    torch.manual_seed(0)
    model = build_model(model_params({"arch": "cnn4", "batch_norm": False, "dropout_conv": 0.0,
                                              "dropout_fc": 0.0, "fc_hidden": 16}, "model")).eval()
    images = np.random.default_rng(1).integers(0, 256, size=(3, 48, 48), dtype=np.uint8)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)), mode="edge")
    # Views by hand with numpy: the image, and windows moved 2 px up, down, left and right.
    views = [images] + [padded[:, 2 + dy:50 + dy, 2 + dx:50 + dx] for dy, dx in ((-2, 0), (2, 0), (0, -2), (0, 2))]
    views += [v[:, :, ::-1] for v in views]
    expected = torch.stack([predict_logits(model, v.copy(), torch.device("cpu")) for v in views]).mean(0)
    tta = predict_logits(model, images, torch.device("cpu"), flip_tta=True, shift_tta=2)
    torch.testing.assert_close(tta, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tta, predict_logits(model, images, torch.device("cpu"), flip_tta=True))


def test_softmax_rows_are_probabilities_even_for_huge_logits() -> None:
    import torch

    logits = np.random.default_rng(0).normal(size=(5, 7)) * 3
    logits[0] = [1000, -1000, 0, 999, 1000, 0, -5]  # exp() of these overflows without the max shift
    probs = ev.softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(probs, torch.softmax(torch.as_tensor(logits), dim=1).numpy(), rtol=1e-12, atol=1e-300)


def test_normalised_confusion_figure_shows_row_normalise() -> None:
    from fer import plots

    matrix = ev.confusion(LABELS, PRED)
    matrix[1] = 0  # a class with no image: its row stays 0, not NaN
    figure = plots.confusion_figure(matrix, "test", normalised=True)
    shown = np.array([float(t.get_text()) for t in figure.axes[0].texts]).reshape(7, 7)
    np.testing.assert_allclose(shown, np.round(ev.row_normalise(matrix), 2))
    assert np.isfinite(shown).all() and (shown[1] == 0).all()
