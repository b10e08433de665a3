"""Where and how the numbers are computed: the device, the precision, the allocator, the seeds.
Shared by training, inference and every stage, so none of them depends on the training loop."""
from __future__ import annotations

import dataclasses
import os
import random
import warnings
from collections.abc import Callable

import numpy as np
import torch


def select_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu functions


@dataclasses.dataclass(frozen=True)
class HardwareProbes:
    """The questions `resolve_precision` asks the hardware. The CPU probes are private torch
    functions, keyed by their names in `torch.cpu`; one this torch build lacks is absent."""
    cuda_bf16: Callable[[], bool]
    cpu_bf16: dict[str, Callable[[], bool]]


def torch_probes() -> HardwareProbes:
    """The real probes of the installed torch."""
    return HardwareProbes(torch.cuda.is_bf16_supported,
                          {name: getattr(torch.cpu, name) for name in CPU_BF16_PROBES if hasattr(torch.cpu, name)})


def resolve_precision(precision: str, device: torch.device, probes: HardwareProbes | None = None) -> str:
    """`auto` -> `bf16` where bfloat16 matrix products run natively (CUDA with bf16, or a CPU with
    AVX512-BF16 or AMX: there it trains CNN4 about twice as fast as fp32, docs/results.md), else
    `fp32`: emulated bf16 would be slower than fp32. When a CPU probe is
    missing from this torch build and no other says yes, `auto` warns (once) and keeps fp32."""
    if precision != "auto":
        return precision
    probes = probes or torch_probes()
    if device.type == "cuda":
        return "bf16" if probes.cuda_bf16() else "fp32"
    if any(probe() for probe in probes.cpu_bf16.values()):
        return "bf16"
    missing = [name for name in CPU_BF16_PROBES if name not in probes.cpu_bf16]
    if missing:
        warnings.warn(f"precision auto: this torch build has no torch.cpu.{', torch.cpu.'.join(missing)}, so "
                      "native bfloat16 cannot be detected; training in fp32 (set precision: bf16 to use it)",
                      RuntimeWarning, stacklevel=2)
    return "fp32"


# glibc's mallopt parameters, and their defaults (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system (or restore
    its defaults with enabled=False); True where this is glibc. By default every tensor of more
    than a few hundred kB (a batch's activations) gets fresh pages from mmap and gives them back
    when freed, so each training step page-faults through them again: with it, system time of
    CNN4 training falls from about a quarter of the CPU time to a few percent (docs/results.md).
    The numbers computed do not change; the process keeps its peak heap."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    except OSError:
        mallopt = None
    if mallopt is None:  # not glibc (musl, macOS): nothing to tune
        return False
    mmap_max, trim = (0, 1 << 30) if enabled else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    return bool(mallopt(_M_MMAP_MAX, mmap_max)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
