"""Measurement helpers shared by the benchmarks: GPU naming, CUDA-event timing, the streaming-read bandwidth."""

from __future__ import annotations

import re
import statistics

import torch

READ_BYTES = 2 << 30  # the streaming-read buffer: 2 GiB, 40x the H100's L2


def gpu_tag(name):
    """'NVIDIA H100 80GB HBM3' -> 'h100'; otherwise the name made file-safe."""
    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    return (match.group(1) if match else re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")).lower()


def median_event_ms(fn, iters, per_call=1, warmup=3):
    """Median over `iters` CUDA-event-timed calls of fn(i), in ms per unit (fn does `per_call` units)."""
    for i in range(warmup):
        fn(i)
    pairs = []
    stream = torch.cuda.current_stream()
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        fn(i)
        end.record(stream)
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs) / per_call


def streaming_read_bw(iters=20):
    """Bytes per second of torch.sum over a 2 GiB float16 buffer (median), the buffer freed afterwards."""
    buffer = torch.empty(READ_BYTES // 2, dtype=torch.float16, device="cuda").normal_()
    ms = median_event_ms(lambda i, b=buffer: b.sum(), iters)
    del buffer
    torch.cuda.empty_cache()
    return READ_BYTES / (ms * 1e-3)
