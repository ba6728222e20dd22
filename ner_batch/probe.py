"""`--runtime auto`: time the candidate runtimes on this machine and keep the faster.

Which runtime wins depends on the CPU, not on the model: OpenVINO's int8 is about twice ONNX
Runtime's where the CPU has AMX and well ahead with AVX-512 VNNI, but slower on AVX2-only CPUs
(docs/openvino.md). CPU flags do not tell it reliably (a capped oneDNN ISA, a VM that hides
flags, an AMD CPU), so `choose` runs each candidate on the same two batches, a short and a
full-window one, after a warm-up, and keeps ONNX Runtime unless another is at least
`MARGIN` times as fast. It costs about 2 s at start-up, once per run (a resumed run uses the
runtime its output recorded).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .features import TextEncoder
from .tagger import LogitsFn

MARGIN = 1.1  # another runtime must beat ONNX Runtime by this factor to be chosen
ROUNDS = 3
CPU_FEATURES = ("amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512f", "avx2")


def cpu_summary() -> dict:
    """The CPU's name and the flags that decide int8/bf16 speed, as /proc/cpuinfo shows them,
    and a oneDNN ISA cap if one is set."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    summary = {
        "name": name,
        "cores": os.cpu_count(),
        "features": [f for f in CPU_FEATURES if f in flags],
    }
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        summary["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    return summary


def describe_cpu(summary: dict | None = None) -> str:
    summary = summary or cpu_summary()
    text = (
        f"{summary['name']}, {summary['cores']} cores, {' '.join(summary['features']) or 'no AVX2'}"
    )
    if "onednn_max_cpu_isa" in summary:
        text += f", ONEDNN_MAX_CPU_ISA={summary['onednn_max_cpu_isa']}"
    return text


def probe_batches(encoder: TextEncoder, max_length: int, rows: int = 32) -> list[tuple]:
    """Two padded (ids, mask, types) batches of made-up sub-tokens: sentence length (32) and a
    full window, the two shapes annotate mostly runs."""
    rng = np.random.default_rng(0)
    vocab = encoder.tokenizer.get_vocab_size()
    batches = []
    for length in sorted({min(32, max_length), max_length}):
        ids = rng.integers(min(1000, vocab // 2), vocab, size=(rows, length), dtype=np.int64)
        ids[:, : len(encoder.prefix_ids)] = encoder.prefix_ids
        ids[:, length - len(encoder.suffix_ids) :] = encoder.suffix_ids
        batches.append((ids, np.ones_like(ids), np.zeros_like(ids)))
    return batches


def tokens_per_second(
    candidates: dict[str, tuple[LogitsFn, int]], batches: list[tuple], rounds: int = ROUNDS
) -> dict[str, float]:
    """Each (LogitsFn, streams)'s throughput on the batches, run as the Tagger runs them:
    `streams` at a time (each batch once per stream). One warm-up pass, then `rounds` passes
    interleaved between the candidates (so a busy moment hits all alike); the median."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    tokens = {
        name: streams * sum(b[0].size for b in batches) for name, (_, streams) in candidates.items()
    }
    pools = {name: ThreadPoolExecutor(streams) for name, (_, streams) in candidates.items()}
    try:
        for round_ in range(rounds + 1):
            for name, (fn, streams) in candidates.items():
                started = time.perf_counter()
                list(pools[name].map(lambda batch, fn=fn: fn(*batch), batches * streams))
                if round_:
                    times[name].append(time.perf_counter() - started)
    finally:
        for pool in pools.values():
            pool.shutdown()
    return {name: tokens[name] / statistics.median(t) for name, t in times.items()}


def choose(
    candidates: dict[str, tuple[LogitsFn, int]], encoder: TextEncoder, max_length: int
) -> dict:
    """Time the candidates (runtime name -> (LogitsFn, streams), onnxruntime first) and return
    the choice: {"runtime", "reason", "tokens_per_second", "probe_seconds", "cpu"}."""
    started = time.perf_counter()
    speeds = tokens_per_second(candidates, probe_batches(encoder, max_length))
    baseline = "onnxruntime" if "onnxruntime" in speeds else next(iter(speeds))
    best = max(speeds, key=speeds.get)
    chosen = best if speeds[best] >= MARGIN * speeds[baseline] else baseline
    shown = ", ".join(f"{name} {speed:,.0f}" for name, speed in speeds.items())
    rule = f"the fastest if at least {MARGIN:g}x {baseline}'s, else {baseline}"
    cpu = cpu_summary()
    choice = {
        "runtime": chosen,
        "reason": f"timed here: {shown} tokens/s ({rule}) on {describe_cpu(cpu)}",
        "tokens_per_second": {name: round(speed) for name, speed in speeds.items()},
        "probe_seconds": round(time.perf_counter() - started, 2),
        "cpu": cpu,
    }
    return choice
