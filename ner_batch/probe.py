"""`--runtime auto`: time the candidate runtimes on this machine and keep the faster.

Which runtime wins depends on the CPU, not on the model: OpenVINO's int8 is about twice ONNX
Runtime's where the CPU has AMX and well ahead with AVX-512 VNNI, but slower on AVX2-only CPUs
(docs/openvino.md). CPU flags do not tell it reliably (a capped oneDNN ISA, a VM that hides
flags, an AMD CPU), so `choose` runs each candidate on the same two batches, a short and a
full-window one, after a warm-up, and keeps ONNX Runtime unless another is at least
`MARGIN` times as fast. It costs about 2 s at start-up (a resumed run uses the runtime its
output recorded).

The choice is remembered (`recall`, `remember`) in a small JSON file in the user's cache
directory, keyed by what decides it: the models' checksums, the precision and window, the
threads and streams asked for, the CPU and the runtimes' versions. The next run with the same
key takes the choice from there and loads only the chosen runtime. The file is never needed: a
missing, corrupt or unwritable one means timing again, never a failed run.

Deliberately not here: which runtimes are candidates and loading them (runtimes.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .bundle import cache_dir
from .features import TextEncoder
from .tagger import LogitsFn

log = logging.getLogger(__name__)

MARGIN = 1.1  # another runtime must beat ONNX Runtime by this factor to be chosen
ROUNDS = 3
CPU_FEATURES = ("amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512f", "avx2")
CACHE_FILE = "runtime-choices.json"  # in bundle.cache_dir(): $NERBATCH_CACHE or ~/.cache/nerbatch
CACHE_FORMAT = 1
CACHE_ENTRIES = 64  # the most recent choices kept; an older one is timed again when next needed


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


# --- the remembered choices ---------------------------------------------------------------------


def cache_file() -> Path:
    """Where choices are remembered."""
    return cache_dir() / CACHE_FILE


def choice_key(identity: dict) -> str:
    """The cache key of everything that decides a choice (runtimes.probe_identity)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def recall(key: str, runtimes: list[str]) -> dict | None:
    """The choice a probe made for `key` (as `choose` returned it, plus "cached": true and
    "probed": when it was timed), if the cache holds a valid one among `runtimes`; else None.
    Never raises: an unreadable or corrupt cache is a miss, logged."""
    file = cache_file()
    entries = _read_entries(file)
    entry = entries.get(key) if entries is not None else None
    if entry is None:
        if entries is not None:
            log.debug("no remembered runtime choice for this bundle and machine in %s", file)
        return None
    problem = _entry_problem(entry, runtimes)
    if problem:
        log.info("ignoring the remembered runtime choice in %s (%s): timing again", file, problem)
        return None
    choice = dict(entry["choice"])
    choice["reason"] += f"; remembered from the probe of {entry['probed']} ({file})"
    return {**choice, "cached": True, "probed": entry["probed"]}


def remember(key: str, choice: dict, about: dict | None = None) -> None:
    """Store `choice` (as `choose` returned it) under `key`, with `about` (what it was for, for
    a reader of the file). Written to a temporary file and renamed, so that concurrent runs
    never leave a torn file (the last one's entries win). Never raises: a cache that cannot be
    written is logged, and the next run times again."""
    file = cache_file()
    entries = _read_entries(file, quiet=True) or {}
    entries.pop(key, None)
    entries[key] = {
        "choice": choice,
        "probed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "about": about or {},
    }
    kept = dict(list(entries.items())[-CACHE_ENTRIES:])  # insertion order: oldest first
    data = json.dumps({"format": CACHE_FORMAT, "choices": kept}, indent=1, sort_keys=False)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
            os.replace(tmp, file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        log.info(
            "cannot remember the runtime choice in %s (%s): the next run times again",
            file,
            e.strerror or e,
        )
        return
    log.debug("runtime choice remembered in %s", file)


def _read_entries(file: Path, quiet: bool = False) -> dict | None:
    """The cache's entries (key -> entry); {} for no cache file; None for an unusable one."""
    report = log.debug if quiet else log.info
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        report("cannot read the runtime choice cache %s (%s): timing again", file, e)
        return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        report("the runtime choice cache %s is not valid JSON (%s): timing again", file, e)
        return None
    if (
        not isinstance(data, dict)
        or data.get("format") != CACHE_FORMAT
        or not isinstance(data.get("choices"), dict)
    ):
        report(
            "the runtime choice cache %s is not format %d {format, choices}: timing again",
            file,
            CACHE_FORMAT,
        )
        return None
    return data["choices"]


def _entry_problem(entry, runtimes: list[str]) -> str | None:
    """What is wrong with a cache entry, or None: the fields `choose` gives, of their types."""
    if not isinstance(entry, dict) or not isinstance(entry.get("choice"), dict):
        return "an entry without a choice"
    choice = entry["choice"]
    if choice.get("runtime") not in runtimes:
        return f"runtime {choice.get('runtime')!r} is not one of {runtimes}"
    speeds = choice.get("tokens_per_second")
    if not isinstance(speeds, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in speeds.values()
    ):
        return "tokens_per_second is not a table of numbers"
    if not isinstance(choice.get("reason"), str) or not isinstance(entry.get("probed"), str):
        return "no reason or time"
    if not isinstance(choice.get("cpu"), dict) or not isinstance(
        choice.get("probe_seconds"), int | float
    ):
        return "no cpu or probe_seconds"
    return None
