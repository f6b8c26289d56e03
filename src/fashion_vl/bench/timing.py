"""Timing, memory and FLOP counting that read the same on CPU and CUDA."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` for ``steps`` calls after ``warmup`` untimed ones (compilation,
    cuDNN autotuning and allocator growth happen there). Each call is timed on its own, synchronised
    before and after, so the median is not skewed by queued work."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def time_once(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``fn()`` and the seconds it took, synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset (CUDA only; ``None`` on CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, as ``torch.utils.flop_counter`` counts them (matmuls, convolutions and
    attention, forward and backward); run it on the eager path, not through a compiled graph."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 20
) -> float:
    """Measured dense matmul rate in FLOP/s: the denominator of model-FLOPs utilisation.

    A measured peak rather than the data-sheet one, so MFU says how close the model runs to what this
    device, driver and torch build deliver (the issue's H100 figure: 781 TFLOP/s bf16).
    """
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median(time_calls(lambda: a @ b, device, steps=repeats, warmup=3))
    return 2 * size**3 / seconds
