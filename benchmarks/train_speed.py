"""Benchmark: training throughput of the pipeline against the bare compute, a plain loop and the
CPU's measured peak, in fp32 and (where the CPU runs it natively) bf16 side by side.

Measured in one run, for each model named (default: train_cnn4's architecture from params.yaml;
several models are measured one after the other, same batch size), for each precision:
  (a) bare forward + backward + optimizer step on random tensors already in memory, channels-last:
      the compute the pipeline cannot avoid; also with the model through `torch.compile`, and with
      its conv blocks in the written order (ReLU before max-pool; training pools first, exactly),
      and, for CNN4 and CNN3, with the max-pool before BatchNorm and after it (`pool_before_norm`);
  (b) the training stage's `fit` end to end: uint8 data in memory, batched augmentation,
      the per-epoch validation pass, history and checkpoint writing;
and once, in fp32, for the first model:
  the augmentation's sampling grid: torch's `F.affine_grid` against `fer.augment.affine_grid`;
  (c) a plain reference: DataLoader over a TensorDataset with per-sample augmentation
      (random shift, flip, rotation/scale per image), default memory format, no validation:
      what the usual tutorial loop does.
First, `fit` in fp32 with glibc's default allocation and with `reuse_freed_memory` (what the
training stage sets), alternating, best of two each, with the system share of the CPU time: before
anything is compiled, since the compiled code's runtime stays in the process (the compiled
variants run last, for the same reason).
The peak is a measured 2048x2048 matrix product in the same precision (best of 5, through BLAS
and through oneDNN as a 1x1 convolution, the faster kept); the share of
it is images/s x training FLOP per image / peak, where training FLOP = 3 x 2 x the forward pass's
multiply-adds (counted on the model's conv and linear layers). bf16 is measured only where
`precision: auto` picks it (native bf16): emulated bf16 is several times slower than fp32.
Prints images/second, the share of the peak and the ratios (b)/(a) and (b)/(c).

Usage: python benchmarks/train_speed.py [--images 4096] [--batch-size 128] [--model cnn4 [cnn3 ...]]
           [--params params.yaml] [--fp32-only]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

from fer.augment import affine_grid  # noqa: E402
from fer.data.synthetic import generate_split  # noqa: E402
from fer.models import ConvBlock, build_model  # noqa: E402
from fer.params import TrainParams, load_section  # noqa: E402
from fer.runtime import resolve_precision, reuse_freed_memory, seed_everything  # noqa: E402
from fer.training import fit, make_optimizer  # noqa: E402


def bare(params: TrainParams, n_images: int, precision: str, compiled: bool = False) -> float:
    """Images/s of forward + backward + optimizer step on one random batch; with `compiled`, the
    model goes through `torch.compile` (default mode: Inductor's generated C++ kernels for the
    element-wise work, oneDNN for convolutions)."""
    model = build_model(params.model).train()  # channels-last, as built
    optimizer = make_optimizer(model, params)
    forward = torch.compile(model) if compiled else model
    x = torch.rand(params.batch_size, 1, 48, 48).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (params.batch_size,))
    steps = max(1, n_images // params.batch_size)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = forward(x).float()
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: oneDNN builds its kernels for these shapes on first use (and compiling)
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * params.batch_size / (time.perf_counter() - started)


@contextlib.contextmanager
def written_block_order():
    """Conv blocks that rectify before pooling in training too, as a plain nn.Sequential does."""
    pool_first = ConvBlock.forward
    ConvBlock.forward = torch.nn.Sequential.forward
    try:
        yield
    finally:
        ConvBlock.forward = pool_first


def block_orders(params: TrainParams, n_images: int, precision: str) -> tuple[float, float]:
    """(a) with the blocks pooling first (as training runs them) and in the written order: best
    of three each, alternating, since the host's speed drifts by more than the difference."""
    best = {True: 0.0, False: 0.0}
    for pool_first in (True, False) * 3:
        with contextlib.nullcontext() if pool_first else written_block_order():
            best[pool_first] = max(best[pool_first], bare(params, n_images, precision))
    return best[True], best[False]


def norm_orders(params: TrainParams, n_images: int, precision: str) -> tuple[float, float] | None:
    """(a) of a conv net with its max-pool before BatchNorm (`model.pool_before_norm`, another
    network) and after it, best of three each, alternating; None for an architecture without
    the option."""
    options = params.model.options
    if not hasattr(options, "pool_before_norm"):
        return None
    variants = {flag: dataclasses.replace(params, model=dataclasses.replace(
        params.model, options=dataclasses.replace(options, pool_before_norm=flag))) for flag in (True, False)}
    best = {True: 0.0, False: 0.0}
    for flag in (True, False) * 3:
        best[flag] = max(best[flag], bare(variants[flag], n_images, precision))
    return best[True], best[False]


def compiled_bare(params: TrainParams, n_images: int, precision: str) -> str:
    """(a) with torch.compile, or why it could not run (it needs a C++ compiler)."""
    try:
        return f"{bare(params, n_images, precision, compiled=True):6.0f} images/s"
    except Exception as error:  # noqa: BLE001 - any failure of the compiler stack is reported, not fatal
        return f"not available ({type(error).__name__}: {str(error).splitlines()[0][:80]})"


def forward_macs(model: torch.nn.Module) -> int:
    """Multiply-adds of one image's forward pass through the conv and linear layers."""
    total = 0

    def count(module: torch.nn.Module, _: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * kernel
        else:
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.rand(1, 1, 48, 48))
    for hook in hooks:
        hook.remove()
    return total


def matmul_peak(precision: str, n: int = 2048, repeats: int = 5) -> float:  # n: a multiple of 64
    """FLOP/s of the best of `repeats` n x n products in `precision`, measured two ways, the faster
    one kept: `torch.matmul` (the BLAS library's GEMM) and the same product as a 1x1 convolution
    over an n-channel, n-pixel channels-last image (oneDNN's GEMM, which the network's own
    convolutions run on). On some CPUs (AMD with AVX-512) the BLAS GEMM reaches only half of
    what oneDNN does, so the BLAS figure alone would understate the peak."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    image = torch.rand(1, n, n // 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)  # n pixels
    kernel = torch.rand(n, n, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
    products = {"matmul": lambda: a @ b, "conv1x1": lambda: F.conv2d(image, kernel)}
    best = math.inf
    with torch.no_grad():
        for product in products.values():
            product()  # warm-up: the kernels are built for these shapes on first use
            for _ in range(repeats):
                started = time.perf_counter()
                product()
                best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best


def pipeline(params: TrainParams, train, val, precision: str) -> float:
    one_epoch = dataclasses.replace(params, epochs=2, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(build_model(params.model), train, val, one_epoch, torch.device("cpu"),
                     Path(tmp) / "ckpt.pt", "benchmark", None)
    # The second epoch (the first warms up allocators), including validation and checkpointing.
    return len(train) / result.history[1].epoch_seconds


class PerSampleAugmented(Dataset):
    """The usual tutorial pattern: augment one image at a time in __getitem__."""

    def __init__(self, base: TensorDataset, params: TrainParams) -> None:
        self.base, self.augment = base, params.augment

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        x = image.float().div(255).unsqueeze(0)
        a = self.augment
        angle = math.radians((torch.rand(1).item() * 2 - 1) * a.max_rotation)
        scale = 1 + (torch.rand(1).item() * 2 - 1) * a.max_scale
        flip = -1.0 if a.flip and torch.rand(1).item() < 0.5 else 1.0
        shift = [(torch.rand(1).item() * 2 - 1) * a.max_shift * 2 / 48 for _ in range(2)]
        theta = torch.tensor([[math.cos(angle) / scale * flip, -math.sin(angle) / scale, shift[0]],
                              [math.sin(angle) / scale * flip, math.cos(angle) / scale, shift[1]]])
        grid = F.affine_grid(theta[None], [1, 1, 48, 48], align_corners=False)
        return F.grid_sample(x[None], grid, padding_mode="border", align_corners=False)[0], label


def reference(params: TrainParams, train, n_images: int) -> float:
    model = build_model(params.model).to(memory_format=torch.contiguous_format).train()
    optimizer = make_optimizer(model, params)
    data = PerSampleAugmented(TensorDataset(torch.as_tensor(train.images[:n_images]),
                                            torch.as_tensor(train.labels[:n_images])), params)
    loader = DataLoader(data, batch_size=params.batch_size, shuffle=True)
    started = time.perf_counter()
    seen = 0
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - started)


def affine_grids(batch_size: int, repeats: int = 50) -> tuple[float, float]:
    """Milliseconds per batch of torch's `F.affine_grid` and of `fer.augment.affine_grid` (which
    the training augmentation uses), best of 5 rounds of `repeats` each, alternating."""
    theta = torch.randn(batch_size, 2, 3, generator=torch.Generator().manual_seed(0))
    grids = {"torch": lambda: F.affine_grid(theta, [batch_size, 1, 48, 48], align_corners=False),
             "fer": lambda: affine_grid(theta, 48, 48)}
    best = {name: math.inf for name in grids}
    for _ in range(5):
        for name, grid in grids.items():
            started = time.perf_counter()
            for _ in range(repeats):
                grid()
            best[name] = min(best[name], (time.perf_counter() - started) / repeats * 1e3)
    return best["torch"], best["fer"]


def allocator_comparison(params: TrainParams, train, val) -> None:
    """fit in fp32 with glibc's defaults and with freed memory kept for reuse, alternating."""
    import resource

    best: dict[bool, tuple[float, float]] = {}
    for reuse in (False, True, False, True):
        reuse_freed_memory(reuse)
        before = resource.getrusage(resource.RUSAGE_SELF)
        speed = pipeline(params, train, val, "fp32")
        after = resource.getrusage(resource.RUSAGE_SELF)
        system = after.ru_stime - before.ru_stime
        share = system / (system + after.ru_utime - before.ru_utime)
        if speed > best.get(reuse, (0.0, 0.0))[0]:
            best[reuse] = (speed, share)
    for reuse, label in ((False, "glibc defaults     "), (True, "reuse_freed_memory ")):
        print(f"fit fp32, {label}: {best[reuse][0]:6.0f} images/s, system time {best[reuse][1]:4.0%} of CPU time")
    print(f"reuse_freed_memory / defaults = {best[True][0] / best[False][0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096, help="training images per measurement")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", nargs="+", default=["cnn4"], help="reads params section train_<model>")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="params file (e.g. params/fer2013.yaml)")
    parser.add_argument("--fp32-only", action="store_true",
                        help="skip bf16 (e.g. with the AVX2 kernels forced, where it is emulated and very slow)")
    args = parser.parse_args()
    seed_everything(0)
    reuse_freed_memory()  # as the training stage does; the allocator comparison toggles it and ends with it on
    train, val = generate_split(args.images, 0), generate_split(args.images // 8, 1)
    native = resolve_precision("auto", torch.device("cpu"))
    precisions = ["fp32", "bf16"] if native == "bf16" and not args.fp32_only else ["fp32"]
    peaks = {precision: matmul_peak(precision) for precision in precisions}
    print(f"batch {args.batch_size}, {args.images} images, {torch.get_num_threads()} threads; matmul peak "
          + ", ".join(f"{p} {peak / 1e9:.0f} GFLOP/s" for p, peak in peaks.items())
          + ("" if native == "bf16" else "; no native bf16 on this CPU: bf16 not measured"))
    sections = {model: dataclasses.replace(load_section(TrainParams, f"train_{model}", args.params),
                                           batch_size=args.batch_size) for model in args.model}
    allocator_comparison(sections[args.model[0]], train, val)  # ends with reuse on, as the stage runs
    torch_grid, fer_grid = affine_grids(args.batch_size)
    print(f"augmentation's sampling grid for {args.batch_size} images: F.affine_grid {torch_grid:.2f} ms, "
          f"fer.augment.affine_grid {fer_grid:.2f} ms: {torch_grid / fer_grid:.2f}x")
    for model, params in sections.items():
        flop_per_image = 6 * forward_macs(build_model(params.model))
        trains_in = resolve_precision(params.precision, torch.device("cpu"))
        print(f"{model} ({args.params}): the pipeline trains in {trains_in} (precision: {params.precision}); "
              f"training FLOP per image {flop_per_image / 1e6:.0f} M")
        rows = {}
        for precision in precisions:
            peak = peaks[precision]
            a, b = bare(params, args.images, precision), pipeline(params, train, val, precision)
            rows[precision] = (a, b)
            print(f"  {precision}: (a) bare {a:6.0f} images/s ({a * flop_per_image / peak:4.0%} of peak)   "
                  f"(b) fit {b:6.0f} images/s ({b * flop_per_image / peak:4.0%} of peak)   (b)/(a) = {b / a:.2f}")
            if not getattr(params.model.options, "pool_before_norm", False):  # there ReLU follows the pool anyway
                pooled_first, written = block_orders(params, args.images, precision)
                print(f"  {precision}: (a) bare, best of 3: pooling before ReLU (as trained) {pooled_first:6.0f} "
                      f"images/s, in the written order {written:6.0f} images/s: {pooled_first / written:.2f}x")
            norms = norm_orders(params, args.images, precision)
            if norms is not None:
                print(f"  {precision}: (a) bare, best of 3: max-pool before BatchNorm (pool_before_norm) "
                      f"{norms[0]:6.0f} images/s, after it {norms[1]:6.0f} images/s: {norms[0] / norms[1]:.2f}x")
        if "bf16" in rows:
            (bare16, fit16), (bare32, fit32) = rows["bf16"], rows["fp32"]
            print(f"  bf16 / fp32: bare {bare16 / bare32:.2f}x, fit {fit16 / fit32:.2f}x")
        if model == args.model[0]:
            c = reference(params, train, args.images)
            print(f"  (c) DataLoader, per-sample aug: {c:6.0f} images/s (fp32)   "
                  f"fit fp32 / (c) = {rows['fp32'][1] / c:.2f}")
    # Last: the compiled code's runtime stays in the process and would slow what ran after it.
    for model, params in sections.items():
        for precision in precisions:
            print(f"{model} {precision}: (a) bare with torch.compile: {compiled_bare(params, args.images, precision)}")


if __name__ == "__main__":
    main()
