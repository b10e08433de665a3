"""Saliency against autograd, the sanity numbers, and activation maximisation that maximises."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fer.data.synthetic import generate_split
from fer.filters import (
    activation_maximisation,
    block_index,
    channel_statistics,
    feature_maps,
    pre_relu,
    receptive_field,
    strongest_unit_boxes,
)
from fer.models import build_model
from fer.params import ModelParams, TrainParams, load_section
from fer.saliency import attribution_maps, contrast_maps, select_examples
from fer.sanity import edge_map, rank_correlations, sanity_report
from fer.training import fit, seed_everything
from tests.conftest import ROOT


def model(arch: str = "cnn4") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelParams(arch, True, 0.0, 0.3, 32)).eval()


def test_vanilla_gradient_equals_autograd() -> None:
    net = model()
    x = torch.rand(5, 1, 48, 48)
    targets = torch.tensor([0, 1, 2, 3, 6])
    maps = attribution_maps(net, x, targets, smoothgrad_noise=0.1, smoothgrad_samples=2, ig_steps=4)
    x_ref = x.clone().requires_grad_(True)
    net(x_ref)[torch.arange(5), targets].sum().backward()
    np.testing.assert_allclose(maps["gradient"], x_ref.grad.abs().squeeze(1).numpy(), rtol=1e-5, atol=1e-7)
    assert set(maps) == {"gradient", "smoothgrad", "integrated_gradients", "grad_cam", "occlusion"}
    assert all(m.shape == (5, 48, 48) and (m >= 0).all() for m in maps.values())


def test_select_examples_takes_a_correct_and_a_wrong_image_per_class() -> None:
    labels = np.repeat(np.arange(7), 3)
    predicted = labels.copy()
    predicted[:9:3] = (labels[:9:3] + 1) % 7  # classes 0-2 have one mistake each
    chosen = select_examples(labels, predicted, seed=0)
    assert labels[chosen].tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 5, 6]
    assert (predicted[chosen] != labels[chosen]).sum() == 3
    np.testing.assert_array_equal(chosen, select_examples(labels, predicted, seed=0))


@pytest.fixture(scope="module")
def trained_cnn4():
    """CNN4 after three quick epochs on synthetic faces, and a validation split with masks."""
    params = load_section(TrainParams, "train_cnn4", ROOT / "params.yaml")
    params = dataclasses.replace(params, epochs=3, batch_size=32)
    seed_everything(0)
    net = build_model(params.model)
    train, val = generate_split(900, 0), generate_split(96, 1)
    with tempfile.TemporaryDirectory() as tmp:
        fit(net, train, val, params, torch.device("cpu"), Path(tmp) / "ckpt.pt", "job", None)
    return net.eval(), val


def _maps_of(model, inputs, labels, methods):
    """The maps of captum `methods`, plus `input_only`: a deliberately model-blind "method"
    (the image itself, whatever the model) taken through the same randomisation test."""
    maps = attribution_maps(model, inputs, labels, 0.15, 4, 8, tuple(m for m in methods if m != "input_only"))
    if "input_only" in methods:
        maps["input_only"] = inputs.detach().squeeze(1).numpy().copy()
    return maps


def _sanity(net, val, n: int = 64, methods=("gradient", "grad_cam", "input_only")) -> dict:
    x = torch.as_tensor(val.images[:n, None] / 255.0, dtype=torch.float32)
    targets = torch.as_tensor(val.labels[:n])
    return sanity_report(net, x, targets, val.masks[:n], methods, _maps_of, np.linspace(0, 0.1, 6), seed=0)


def test_sanity_numbers_on_synthetic_faces(trained_cnn4) -> None:
    net, val = trained_cnn4
    report = _sanity(net, val)
    assert report["gradient"]["mass_in_mask"] >= 2 * report["mask_area_fraction"]
    assert report["gradient"]["pointing_game"] >= report["random_map"]["pointing_game"] + 0.4
    # The randomisation test separates maps that depend on the weights from maps that do not:
    # the trained model's maps decorrelate from its re-initialised copy's, a model-blind map does not.
    assert report["gradient"]["randomisation_spearman"] < 0.3
    assert report["grad_cam"]["randomisation_spearman"] < 0.3
    assert report["input_only"]["randomisation_spearman"] > 0.9
    assert report["gradient"]["deletion_auc"] < report["random_order"]["deletion_auc"]
    assert report["gradient"]["insertion_auc"] > report["random_order"]["insertion_auc"]


def test_edge_control_depends_on_the_input_only(trained_cnn4) -> None:
    """The edge-detector control scores the same against the masks whichever model is tested,
    while the gradient maps do not; and it is the Sobel magnitude of each image on its own."""
    net, val = trained_cnn4
    untrained = model()
    trained_report, untrained_report = (_sanity(m, val, n=16, methods=("gradient",)) for m in (net, untrained))
    for key in ("pointing_game", "mass_in_mask"):
        assert trained_report["edges"][key] == untrained_report["edges"][key]
    assert trained_report["gradient"]["mass_in_mask"] != untrained_report["gradient"]["mass_in_mask"]

    step = np.zeros((1, 6, 6))
    step[:, :, 3:] = 1.0  # a vertical edge between columns 2 and 3
    expected = np.zeros((6, 6))
    expected[:, 2:4] = 4.0  # Sobel: (1 + 2 + 1) x the step, on both sides of the edge
    np.testing.assert_allclose(edge_map(step)[0], expected)
    images = np.random.default_rng(0).random((3, 48, 48))
    np.testing.assert_allclose(edge_map(images)[1], edge_map(images[1:2])[0])  # no mixing across images


def test_rank_correlation_handles_constant_maps() -> None:
    maps = np.random.default_rng(0).random((3, 48, 48))
    zeros = np.zeros_like(maps)
    values = rank_correlations(maps, zeros)
    assert np.isfinite(values).all() and (values == 0).all()
    assert rank_correlations(zeros, zeros).tolist() == [1.0, 1.0, 1.0]
    assert rank_correlations(maps, maps * 2 + 1) == pytest.approx(1.0)


def test_contrast_map_is_the_gradient_of_the_logit_difference(trained_cnn4) -> None:
    net, _ = trained_cnn4
    x = torch.rand(3, 1, 48, 48)
    true, pred = torch.tensor([1, 2, 5]), torch.tensor([0, 5, 2])
    x_ref = x.clone().requires_grad_(True)
    logits = net(x_ref)
    (logits[torch.arange(3), true] - logits[torch.arange(3), pred]).sum().backward()
    np.testing.assert_allclose(contrast_maps(net, x, true, pred), x_ref.grad.abs().squeeze(1).numpy(),
                               rtol=1e-5, atol=1e-7)


def test_activation_maximisation_raises_each_channel(trained_cnn4) -> None:
    net, val = trained_cnn4
    block = block_index(net, "last")
    assert block == 3 and block_index(net, "features.1.0") == 1
    images, start, final = activation_maximisation(net, block, steps=40, lr=0.03, tv_weight=0.05, seed=0)
    assert images.shape == (128, 48, 48)
    val_x = torch.as_tensor(val.images[:, None] / 255.0, dtype=torch.float32)
    val_mean = channel_statistics(net, block, val_x)[0].mean(axis=0)
    # Every channel ends above its mean over real faces; nearly every one beats its random start
    # (keep-best never goes below the start; a channel whose start already scores high can keep it).
    assert (final > val_mean).all()
    assert np.mean(final > start) >= 0.95
    assert np.median(final - val_mean) > 3 * np.median(np.abs(val_mean))
    # The objective is the pre-ReLU mean, which is negative for some channels at the start.
    x = torch.as_tensor(images[:, None])
    with torch.no_grad():
        recomputed = pre_relu(net, block, x).mean(dim=(2, 3)).diagonal().numpy()
    np.testing.assert_allclose(recomputed, final, rtol=1e-4, atol=1e-5)


def test_feature_maps_and_dead_channels(trained_cnn4) -> None:
    net, val = trained_cnn4
    x = torch.as_tensor(val.images[:1, None] / 255.0, dtype=torch.float32)
    maps = feature_maps(net, x)
    assert [m.shape for m in maps.values()] == [(32, 48, 48), (64, 24, 24), (128, 12, 12), (128, 6, 6)]
    assert all((m >= 0).all() for m in maps.values())
    with torch.no_grad():  # a channel made dead by a large negative bias is flagged
        bn = net.features[3][1]
        saved = bn.bias[5].item()
        bn.bias[5] = -1e4
        _, peaks = channel_statistics(net, 3, torch.as_tensor(val.images[:, None] / 255.0, dtype=torch.float32))
        bn.bias[5] = saved
    assert peaks[5] <= 0 and (peaks > 0).sum() >= 100


def test_receptive_fields_match_the_architecture(trained_cnn4) -> None:
    assert [receptive_field(b)[0] for b in range(4)] == [3, 8, 18, 38]
    assert [receptive_field(b)[1] for b in range(4)] == [1, 2, 4, 8]
    net, val = trained_cnn4
    x = torch.as_tensor(val.images[:4, None] / 255.0, dtype=torch.float32)
    boxes = strongest_unit_boxes(net, 0, x, np.array([0, 1, 2, 3]))
    assert ((boxes[:, 2] - boxes[:, 0]) <= 2).all() and (boxes >= 0).all() and (boxes <= 47).all()
    with torch.no_grad():
        maps = pre_relu(net, 0, x)
    for k, (top, left, bottom, right) in enumerate(boxes):
        row, col = divmod(int(maps[k, k].argmax()), 48)
        assert top <= row <= bottom and left <= col <= right


def test_filter_layers_are_named_by_last_all_or_a_list() -> None:
    from fer.filters import conv_layer_names
    from fer.params import ParamsError

    net = model()
    assert conv_layer_names(net, "last") == ["features.3.0"]
    assert conv_layer_names(net, "all") == ["features.0.0", "features.1.0", "features.2.0", "features.3.0"]
    assert conv_layer_names(net, "last, features.1.0,last") == ["features.1.0", "features.3.0"]
    with pytest.raises(ParamsError, match=r"visualize.filters_layers: unknown conv layer 'features.9.0'"):
        conv_layer_names(net, "features.9.0")
