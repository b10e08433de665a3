"""Saliency against autograd; activation maximisation actually maximises."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from fer.filters import activation_maximisation, block_index, channel_means, pre_relu
from fer.models import build_model
from fer.params import ModelParams
from fer.saliency import attribution_maps, select_examples


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


def test_select_examples_prefers_correct_predictions() -> None:
    labels = np.repeat(np.arange(7), 3)
    predicted = labels.copy()
    predicted[::3] = (labels[::3] + 1) % 7
    chosen = select_examples(labels, predicted, per_class=1, seed=0)
    assert labels[chosen].tolist() == list(range(7))
    assert (predicted[chosen] == labels[chosen]).all()


def trained_cnn4() -> torch.nn.Module:
    """CNN4 after one quick epoch on synthetic faces (a random net has many dead channels)."""
    import dataclasses

    from fer.data.synthetic import generate_split
    from fer.params import TrainParams, load_section
    from fer.training import fit
    from tests.conftest import ROOT

    params = load_section(TrainParams, "train_cnn4", ROOT / "params.yaml")
    params = dataclasses.replace(params, epochs=1, batch_size=32)
    net = model()
    train, val = generate_split(320, 0), generate_split(64, 1)
    fit(net, train, val, params, torch.device("cpu"), Path(tempfile.mkdtemp()) / "ckpt.pt", "job", None)
    return net.eval(), val


def test_activation_maximisation_raises_each_channel() -> None:
    net, val = trained_cnn4()
    block = block_index(net, "last")
    assert block == 3 and block_index(net, "features.1.0") == 1
    images, start, final = activation_maximisation(net, block, steps=40, lr=0.03, tv_weight=0.05, seed=0)
    assert images.shape == (128, 48, 48)
    val_x = torch.as_tensor(val.images[:, None] / 255.0, dtype=torch.float32)
    val_mean = channel_means(net, block, val_x).mean(axis=0)
    assert (final > start).all()
    assert (final > val_mean).all()
    assert np.median(final - val_mean) > 3 * np.median(np.abs(val_mean))
    # The objective is the pre-ReLU mean, which is negative for some channels at the start.
    x = torch.as_tensor(images[:, None])
    with torch.no_grad():
        recomputed = pre_relu(net, block, x).mean(dim=(2, 3)).diagonal().numpy()
    np.testing.assert_allclose(recomputed, final, rtol=1e-4, atol=1e-5)
