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
    channel_statistics,
    feature_maps,
    layer_name,
    pre_activation,
    receptive_fields,
    unit_boxes,
)
from fer.models import build_model, model_params
from fer.params import TrainParams, load_section
from fer.runtime import seed_everything
from fer.saliency import METHODS, attribution_maps, contrast_maps, default_options, select_examples
from fer.sanity import edge_map, rank_correlations, sanity_report
from fer.training import fit
from tests.conftest import ROOT, tiny_params, write_params

MODEL_OPTIONS = {"cnn4": {"batch_norm": True, "dropout_conv": 0.0, "dropout_fc": 0.3, "fc_hidden": 32},
                 "cnn3": {"batch_norm": True, "dropout_conv": 0.0, "dropout_fc": 0.3, "fc_hidden": 32},
                 "resnet9": {"width": 8, "dropout_fc": 0.3}}


def model(arch: str = "cnn4") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(model_params({"arch": arch, **MODEL_OPTIONS[arch]}, "model")).eval()


def test_vanilla_gradient_equals_autograd() -> None:
    net = model()
    x = torch.rand(5, 1, 48, 48)
    targets = torch.tensor([0, 1, 2, 3, 6])
    maps = attribution_maps(net, x, targets, default_options(METHODS))
    x_ref = x.clone().requires_grad_(True)
    net(x_ref)[torch.arange(5), targets].sum().backward()
    np.testing.assert_allclose(maps["gradient"], x_ref.grad.abs().squeeze(1).numpy(), rtol=1e-5, atol=1e-7)
    assert list(maps) == list(METHODS) and {"gradient", "smoothgrad", "integrated_gradients", "grad_cam",
                                            "occlusion"} <= set(METHODS)
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
    """The maps of registered `methods`, plus `input_only`: a deliberately model-blind "method"
    (the image itself, whatever the model) taken through the same randomisation test."""
    maps = attribution_maps(model, inputs, labels, default_options([m for m in methods if m != "input_only"]))
    if "input_only" in methods:
        maps["input_only"] = inputs.detach().squeeze(1).numpy().copy()
    return maps


def _sanity(net, val, n: int = 64, methods=("gradient", "grad_cam", "input_only")) -> dict:
    """The report's numbers as plain dicts: method -> its numbers, plus the report-wide ones."""
    x = torch.as_tensor(val.images[:n, None] / 255.0, dtype=torch.float32)
    targets = torch.as_tensor(val.labels[:n])
    report = sanity_report(net, x, targets, val.masks[:n], _maps_of, {m: n for m in methods},
                           np.linspace(0, 0.1, 6), seed=0)
    return report.as_dict()["methods"] | {"mask_area_fraction": report.mask_area_fraction,
                                          "random_map_pointing_game": report.random_map_pointing_game}


def test_sanity_numbers_on_synthetic_faces(trained_cnn4) -> None:
    net, val = trained_cnn4
    report = _sanity(net, val)
    assert report["gradient"]["mass_in_mask"] >= 2 * report["mask_area_fraction"]
    assert report["gradient"]["pointing_game"] >= report["random_map_pointing_game"] + 0.4
    # The randomisation test separates maps that depend on the weights from maps that do not:
    # the trained model's maps decorrelate from its re-initialised copy's, a model-blind map does not.
    assert report["gradient"]["randomisation_spearman"] < 0.3
    assert report["grad_cam"]["randomisation_spearman"] < 0.3
    assert report["input_only"]["randomisation_spearman"] > 0.9
    assert report["gradient"]["deletion_auc"] < report["gradient"]["random_order_deletion_auc"]
    assert report["gradient"]["insertion_auc"] > report["gradient"]["random_order_insertion_auc"]


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
    block = layer_name(net, "last")
    assert block == "features.3.0" and layer_name(net, "features.1.0") == "features.1.0"
    images, start, final = activation_maximisation(net, block, steps=40, lr=0.03, tv_weight=0.05, seed=0)
    assert images.shape == (128, 48, 48)
    val_x = torch.as_tensor(val.images[:, None] / 255.0, dtype=torch.float32)
    val_mean = channel_statistics(net, block, val_x).means.mean(axis=0)
    # Every channel ends above its mean over real faces; nearly every one beats its random start
    # (keep-best never goes below the start; a channel whose start already scores high can keep it).
    assert (final > val_mean).all()
    assert np.mean(final > start) >= 0.95
    assert np.median(final - val_mean) > 3 * np.median(np.abs(val_mean))
    # The objective is the pre-ReLU mean, which is negative for some channels at the start.
    x = torch.as_tensor(images[:, None])
    with torch.no_grad():
        recomputed = pre_activation(net, block, x).mean(dim=(2, 3)).diagonal().numpy()
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
        x_val = torch.as_tensor(val.images[:, None] / 255.0, dtype=torch.float32)
        peaks = channel_statistics(net, "features.3.0", x_val).peaks
        bn.bias[5] = saved
    assert peaks[5] <= 0 and (peaks > 0).sum() >= 100


def test_receptive_fields_are_computed_from_the_modules(trained_cnn4) -> None:
    net, val = trained_cnn4
    fields = receptive_fields(net)  # each block adds a 3x3 conv and a 2x2 pool
    assert [f.size for f in fields.values()] == [3, 8, 18, 38]
    assert [f.stride for f in fields.values()] == [1, 2, 4, 8]
    assert [f.start for f in fields.values()] == [0.0, 0.5, 1.5, 3.5]  # a pool's unit sits between its pixels
    pooled = build_model(model_params({"arch": "cnn4", **MODEL_OPTIONS["cnn4"], "pool_before_norm": True}, "m"))
    pooled_fields = receptive_fields(pooled)  # its rectified maps come after the pool: one more 2x2 each
    assert [(f.size, f.stride, f.start) for f in pooled_fields.values()] == [
        (4, 2, 0.5), (10, 4, 1.5), (22, 8, 3.5), (46, 16, 7.5)]
    resnet = receptive_fields(model("resnet9"))  # the residual blocks' convs add to the path, their sum does not
    assert list(resnet) == list(model("resnet9").conv_layers())
    assert [f.size for f in resnet.values()] == [3, 8, 18, 26, 34, 54, 94, 126]
    x = torch.as_tensor(val.images[:4, None] / 255.0, dtype=torch.float32)
    units = channel_statistics(net, "features.0.0", x).strongest[np.arange(4), np.arange(4)]
    boxes = unit_boxes(fields["features.0.0"], units)
    assert ((boxes[:, 2] - boxes[:, 0]) <= 2).all() and (boxes >= 0).all() and (boxes <= 47).all()
    with torch.no_grad():
        maps = pre_activation(net, "features.0.0", x)
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
    with pytest.raises(ParamsError, match=r"visualize.filters.layers: unknown conv layer 'features.9.0'"):
        conv_layer_names(net, "features.9.0")


@pytest.mark.parametrize("method", list(METHODS))
def test_every_registered_method_is_drawn_and_checked(method: str, trained_cnn4) -> None:
    """Each method's maps are non-negative (N, 48, 48), its options have a section in both params
    files, and the sanity report scores it (on fewer images when it is expensive)."""
    from fer.params import VisualizeParams

    for path in (ROOT / "params.yaml", ROOT / "params" / "fer2013.yaml"):
        assert method in load_section(VisualizeParams, "visualize", path).methods.by_method
    net, val = trained_cnn4
    x = torch.as_tensor(val.images[:6, None] / 255.0, dtype=torch.float32)
    targets = torch.as_tensor(val.labels[:6])
    maps = attribution_maps(net, x, targets, default_options([method]))[method]
    assert maps.shape == (6, 48, 48) and np.isfinite(maps).all() and (maps >= 0).all() and maps.max() > 0
    scored_on = 3 if METHODS[method].expensive else 6
    report = sanity_report(net, x, targets, val.masks[:6], _maps_of, {method: scored_on},
                           np.linspace(0, 0.1, 3), seed=0)
    row = report.methods[method]
    assert row.images == scored_on and -1 <= row.randomisation_spearman <= 1
    assert 0 <= row.deletion_auc <= 1 and 0 <= row.insertion_auc <= 1 and row.pointing_game is not None
    assert list(report.methods) == [method, "edges"]


def test_visualize_params_name_every_registered_method_once(tmp_path: Path) -> None:
    from fer.params import ParamsError, VisualizeParams

    params = tiny_params()
    del params["visualize"]["methods"]["grad_cam"]
    write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ParamsError, match=r"visualize.methods: missing method\(s\) \['grad_cam'\]"):
        load_section(VisualizeParams, "visualize", tmp_path / "params.yaml")
    params["visualize"]["methods"] |= {"grad_cam": {}, "lime": {}}
    write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ParamsError, match=r"visualize.methods: unknown method\(s\) \['lime'\]"):
        load_section(VisualizeParams, "visualize", tmp_path / "params.yaml")


def test_image_figures_draw_every_cell_where_its_labels_say() -> None:
    """The saliency, filter and feature-map figures are one image each (a mosaic): the cell under
    a column label in a labelled row holds that row's image, map or overlay."""
    from fer.plots import feature_maps_figure, filter_grid, saliency_figure

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 48, 48), dtype=np.uint8)
    maps = {"gradient": rng.random((3, 48, 48)), "grad_cam": rng.random((3, 48, 48))}
    figure = saliency_figure(faces, maps, ["a", "b", "c"], "t", {"gradient": "note"})
    [ax] = figure.axes
    mosaic = ax.images[0].get_array()
    columns = [label.get_text() for label in ax.get_xticklabels()]
    assert columns == ["", "gradient\nnote", "overlay", "grad_cam", "overlay"]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["a", "b", "c"]
    assert mosaic.shape == (3 * 48 + 2 * 2, 5 * 48 + 4 * 2, 3)

    def cell(image: np.ndarray, row: int, col: int, size: int = 48) -> np.ndarray:
        return image[row * (size + 2):row * (size + 2) + size, col * (size + 2):col * (size + 2) + size]

    np.testing.assert_allclose(cell(mosaic, 2, 0)[..., 0], faces[2] / 255)
    heat = (maps["grad_cam"][1] - maps["grad_cam"][1].min()) / np.ptp(maps["grad_cam"][1])
    hottest = np.unravel_index(heat.argmax(), heat.shape)
    assert cell(mosaic, 1, 3)[hottest].sum() > cell(mosaic, 1, 3)[np.unravel_index(heat.argmin(), heat.shape)].sum()
    np.testing.assert_allclose(cell(mosaic, 1, 4), 0.6 * cell(mosaic, 1, 3) + 0.4 * cell(mosaic, 1, 0))

    grid = filter_grid(rng.random((20, 48, 48)), "t", columns=16).axes[0]
    assert grid.images[0].get_array().shape[:2] == (2 * 48 + 2, 16 * 48 + 15 * 2)
    assert [label.get_text() for label in grid.get_yticklabels()] == ["0", "16"]
    assert np.all(cell(grid.images[0].get_array(), 1, 5) == 1.0)  # channel 21 does not exist: left white

    layers = {"features.0.0": rng.random((12, 48, 48)), "features.3.0": rng.random((12, 6, 6))}
    fmaps = feature_maps_figure(faces[0], layers, "t").axes[0].images[0].get_array()
    deep = cell(fmaps, 1, 1)
    assert np.all(deep[:8, :8] == deep[0, 0]) and not np.all(deep == deep[0, 0])  # 6x6 map in 8-pixel blocks
