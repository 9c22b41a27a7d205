"""Median CUDA-event time of a GPU function, shared by the kernel benches (bench/ is on a bench script's path)."""

import statistics

import torch


def median_ms(fn, repeats: int, warmup: int = 0) -> float:
    """Median milliseconds of `repeats` timed calls of fn(), each between two CUDA events, after `warmup` untimed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
