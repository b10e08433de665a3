"""The registered architectures, their interface, the layer table and checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fer import FerError
from fer.models import (
    ARCHITECTURES,
    CheckpointError,
    ConvBlock,
    build_model,
    layer_table,
    layer_table_markdown,
    load_model,
    model_params,
    save_checkpoint,
)
from fer.params import ModelParams
from tests.conftest import ROOT


def params(arch: str, batch_norm: bool = False) -> ModelParams:
    return model_params({"arch": arch, "batch_norm": batch_norm, "dropout_conv": 0.0, "dropout_fc": 0.0,
                         "fc_hidden": 256}, "model")


def test_cnn4_matches_the_study() -> None:
    rows = {r.name: r for r in layer_table(build_model(params("cnn4")))}
    convs = [r for r in rows.values() if r.kind == "Conv2d"]
    assert [r.output_shape for r in convs] == [(32, 48, 48), (64, 24, 24), (128, 12, 12), (128, 6, 6)]
    assert rows["classifier.0"].output_shape == (1152,)
    assert rows["classifier.1"].parameters == 1152 * 256 + 256
    assert rows["classifier.4"].output_shape == (7,)
    assert [r.parameters for r in convs] == [9 * 32 + 32, 32 * 64 * 9 + 64, 64 * 128 * 9 + 128, 128 * 128 * 9 + 128]


def test_cnn3_widths() -> None:
    convs = [r for r in layer_table(build_model(params("cnn3"))) if r.kind == "Conv2d"]
    assert [r.output_shape[0] for r in convs] == [64, 128, 512]


@pytest.mark.parametrize("arch", ["cnn4", "cnn3"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_layer_table_totals_equal_parameter_count(arch: str, batch_norm: bool) -> None:
    model = build_model(params(arch, batch_norm))
    rows = layer_table(model)
    assert sum(r.parameters for r in rows) == sum(p.numel() for p in model.parameters())
    assert f"**{sum(p.numel() for p in model.parameters()):,}**" in layer_table_markdown(rows, arch)


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = build_model(params("cnn4", batch_norm=True))
    model.standardize.mean.fill_(0.3)
    save_checkpoint(model, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    x = torch.rand(3, 1, 48, 48)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))
    assert torch.load(tmp_path / "model.pt", weights_only=True)["model_params"]["arch"] == "cnn4"


def test_pool_before_norm_is_an_option_of_the_conv_nets(tmp_path: Path) -> None:
    """`pool_before_norm` orders a block conv, max-pool, BatchNorm, ReLU: the same parameters,
    BatchNorm and ReLU at half the side. A checkpoint names the option only when it is set, so
    one written before it existed (and the shipped model's bytes) stay as they were."""
    plain = params("cnn4", batch_norm=True)
    assert plain.options.pool_before_norm is False and "pool_before_norm" not in plain.as_dict()
    fast = model_params({**plain.as_dict(), "pool_before_norm": True}, "model")
    assert fast.as_dict()["pool_before_norm"] is True
    torch.manual_seed(0)
    net = build_model(fast)
    rows = layer_table(net)
    assert [(r.kind, r.output_shape) for r in rows[1:5]] == [
        ("Conv2d", (32, 48, 48)), ("MaxPool2d", (32, 24, 24)), ("BatchNorm2d", (32, 24, 24)), ("ReLU", (32, 24, 24))]
    assert sum(r.parameters for r in rows) == sum(p.numel() for p in build_model(plain).parameters())
    assert "(3x3 conv, 2x2 max-pool, BatchNorm, ReLU)" in net.describe()
    net.train()(torch.rand(8, 1, 48, 48))  # running statistics move away from their initial values
    save_checkpoint(net, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    x = torch.rand(3, 1, 48, 48)
    assert loaded.params == fast and torch.equal(loaded(x), net.eval()(x))


def _saved_cnn4(path: Path) -> Path:
    save_checkpoint(build_model(params("cnn4")), path)
    return path


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:2000]), "not a readable model checkpoint (RuntimeError: "),
    (lambda p: p.write_text("emotion,pixels,Usage\n"), "not a readable model checkpoint ("),
    (lambda p: p.write_bytes(b""), "not a readable model checkpoint (EOFError"),
    (lambda p: torch.save([1, 2, 3], p), "not a model checkpoint (no model_params, state_dict)"),
    (lambda p: torch.save({"fingerprint": "x", "history": []}, p),
     "not a model checkpoint (no model_params, state_dict)"),
    (lambda p: torch.save({"model_params": params("cnn3").as_dict(),
                           "state_dict": build_model(params("cnn4")).state_dict()}, p),
     "weights do not fit the architecture it names (RuntimeError: "),
    (lambda p: torch.save({"model_params": {"arch": "vgg99"}, "state_dict": {}}, p),
     "names an architecture this project cannot build (model_params.arch: 'vgg99' is not one of cnn4"),
    (lambda p: torch.save({"model_params": params("cnn4").as_dict() | {"widths": [1]}, "state_dict": {}}, p),
     "names an architecture this project cannot build (model_params: unknown key(s) ['widths']"),
    (lambda p: p.unlink(), "model checkpoint not found"),
])
def test_a_file_that_is_not_a_checkpoint_names_the_file(tmp_path: Path, damage, message: str) -> None:
    path = _saved_cnn4(tmp_path / "model.pt")
    damage(path)
    with pytest.raises(FerError) as info:
        load_model(path)
    assert isinstance(info.value, CheckpointError)
    assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_registered_architecture_keeps_the_interface(arch: str, tmp_path: Path) -> None:
    """What the library reads from a network: 7 logits for 48x48 faces, an activation module
    for every conv layer whose output has that conv's channels, a one-line description, and a
    checkpoint that rebuilds the same network from the architecture and options it records."""
    torch.manual_seed(0)
    net = build_model(_params_yaml_model(arch)).eval()
    x = torch.rand(2, 1, 48, 48)
    assert net(x).shape == (2, 7)
    convs, activations = net.conv_layers(), net.activations()
    assert list(activations) == list(convs) and activations[list(convs)[-1]] is net.last_activation()
    seen: dict[str, torch.Tensor] = {}
    hooks = [activations[name].register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out))
             for name in convs]
    net(x)
    for hook in hooks:
        hook.remove()
    for name, conv in convs.items():
        assert seen[name].shape[1] == conv.out_channels and (seen[name] >= 0).all(), name
    assert net.describe() and "\n" not in net.describe()
    save_checkpoint(net, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.params == net.params and type(loaded) is type(net)
    torch.testing.assert_close(loaded(x), net(x))


def _params_yaml_model(arch: str) -> ModelParams:
    section = yaml.safe_load((ROOT / "params.yaml").read_text())
    sections = [s["model"] for name, s in section.items() if name.startswith("train_") and s["model"]["arch"] == arch]
    assert sections, f"no train_<model> section of params.yaml uses {arch}"
    return model_params(sections[0], "model")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", [*ARCHITECTURES, "cnn4 without BatchNorm, with conv dropout"])
def test_training_blocks_pool_first_with_the_written_orders_numbers(arch: str, precision: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step of a ConvBlock network (pool before ReLU) gives bit for bit the logits and
    gradients of the same network run in the written order (ReLU before pool), in both precisions;
    dropout draws the same masks, seeded alike."""
    if arch in ARCHITECTURES:
        model = _params_yaml_model(arch)
    else:
        model = model_params({"arch": "cnn4", "batch_norm": False, "dropout_conv": 0.2, "dropout_fc": 0.3,
                              "fc_hidden": 256}, "model")
    torch.manual_seed(0)
    net = build_model(model).train()
    blocks = [m for m in net.modules() if isinstance(m, ConvBlock)]
    if not blocks:
        pytest.skip(f"{arch} has no ConvBlock")
    x = torch.rand(16, 1, 48, 48).contiguous(memory_format=torch.channels_last)
    rectified: list[torch.Size] = []
    hook = blocks[0][blocks[0].relu_index].register_forward_hook(lambda _m, _i, out: rectified.append(out.shape))
    net.eval()(x)
    net.train()(x)
    hook.remove()
    assert rectified[0][-1] == 2 * rectified[1][-1]  # the full map for hooks in eval, the pooled one in training

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = net(x).float()
        torch.nn.functional.cross_entropy(logits, torch.arange(16) % 7).backward()
        return logits, [p.grad.clone() for p in net.parameters()]

    state = {k: v.clone() for k, v in net.state_dict().items()}
    pooled_first = step()
    net.load_state_dict(state)  # the same BatchNorm running statistics before the second step
    monkeypatch.setattr(ConvBlock, "forward", torch.nn.Sequential.forward)
    written_order = step()
    assert torch.equal(pooled_first[0], written_order[0])
    assert all(torch.equal(a, b) for a, b in zip(pooled_first[1], written_order[1]))
