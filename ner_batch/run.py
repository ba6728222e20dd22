"""What an annotate run is asked to do (`AnnotateConfig`, checked before any work), the stop flag
its engine checks, and the one rule that cuts a document stream into the chunks tagged together.

The modules of a run: plan.py decides everything before the first document (bundle, variant,
runtime, window, settings, the output and its manifest, the resume point); an engine
(annotate.py on this machine, ray_engine.py on a Ray cluster) turns the documents after that
point into spans; committer.py commits them part by part. Chunks are cut by `chunks` on every
engine and in the in-memory API, so that batches, and so int8 scores, do not depend on where a
run was stopped or which engine tagged.

Deliberately not here: reading (readers.py), tagging (tagger.py), the storage layer (output.py).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from .choices import DECODERS, ENGINES, RUNTIMES
from .errors import OptionError
from .readers import ReadOptions
from .tagger import Span, Tagger, TaggerOptions

_TAGGING = TaggerOptions()  # the defaults the config repeats by name, not by value


@dataclass
class RayOptions:
    """Where and how wide `engine="ray"` runs (see ray_engine.py)."""

    address: str | None = None  # None: RAY_ADDRESS, a running local cluster, or a new one
    num_workers: int | None = None  # tagging actors; None: as many as the cluster's CPUs/GPUs fit
    cpus_per_worker: int = 1  # CPUs each actor reserves = its ONNX Runtime threads
    gpus_per_worker: float | None = None  # None: 1 with device "cuda", else 0


@dataclass
class AnnotateConfig:
    inputs: list[str]
    output: str
    model: str = "export/minilm"
    variant: str = "auto"
    device: str = "cpu"
    batch_size: int = _TAGGING.batch_size
    max_batch_tokens: int = _TAGGING.max_batch_tokens
    segment: str = _TAGGING.segment  # context boundaries: see choices.SEGMENTS
    # Word labels (decode.DECODERS); None: the TaggerOptions default (viterbi) for a new output,
    # and for a resumed one the decoding it records (argmax for outputs of nerbatch < 0.5).
    decode: str | None = None
    max_length: int | None = None  # default: the bundle's
    stride: int | None = None
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = all cores
    streams: int = _TAGGING.streams  # batches run at once, each on threads / streams cores
    read: ReadOptions = field(default_factory=ReadOptions)
    chunk_docs: int = 2048  # documents tokenised and tagged together (sorted by length)
    # ... or fewer, when they are long: 0.5 MB of text (about 115k sub-tokens) is plenty to sort
    # into full batches; 2 MB peaked 43% higher (tiny model, 5 MB corpus: 524 vs 366 MB).
    chunk_chars: int = 500_000
    part_docs: int = 20_000  # documents per committed part (the most work a crash redoes)
    overwrite: bool = False
    engine: str = "local"  # "local" (annotate.py), "ray" (ray_engine.py) or "spark" (spark.py)
    ray: RayOptions = field(default_factory=RayOptions)
    # Spark's master URL; None: the session spark-submit gives, else local[*] (spark.py)
    spark_master: str | None = None
    runtime: str = "auto"  # "onnxruntime", "openvino" or "auto" (timed at start: probe.py)

    def tagger_options(self) -> TaggerOptions:
        return TaggerOptions(
            self.batch_size,
            self.max_batch_tokens,
            self.segment,
            self.streams,
            self.decode or _TAGGING.decode,
        )

    def check(self) -> None:
        """Refuse an option out of its range before any work, naming the range (OptionError).
        What depends on the bundle (the window against its positions) is checked when the
        bundle is loaded."""
        if self.engine not in ENGINES:
            raise OptionError(f"unknown engine {self.engine!r}; expected one of {list(ENGINES)}")
        if self.runtime not in RUNTIMES:
            raise OptionError(f"unknown runtime {self.runtime!r}; expected one of {list(RUNTIMES)}")
        if self.decode is not None and self.decode not in DECODERS:
            raise OptionError(f"unknown decoding {self.decode!r}; expected one of {list(DECODERS)}")
        minimum = {
            "batch_size": 1,
            "max_batch_tokens": 1,
            "streams": 0,
            "part_docs": 1,
            "chunk_docs": 1,
            "chunk_chars": 1,
            "threads": 0,
            "max_length": 1,
            "stride": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is None and name in ("max_length", "stride"):
                continue  # the bundle's
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                option = "--" + name.replace("_", "-")
                raise OptionError(f"{option} must be an integer >= {low}, not {value!r}")
        try:
            self.read.check()
        except ValueError as e:
            raise OptionError(str(e)) from e
        self._check_ray()
        if self.spark_master is not None and self.engine != "spark":
            raise OptionError("--spark-master needs --engine spark")

    def _check_ray(self) -> None:
        """Ray's options need engine "ray" and values that can work there (OptionError)."""
        options = self.ray
        if self.engine != "ray":
            if options != RayOptions():
                raise OptionError(
                    "--ray-address, --num-workers, --cpus-per-worker and --gpus-per-worker "
                    "need --engine ray"
                )
            return
        if options.num_workers is not None and options.num_workers < 1:
            raise OptionError(f"--num-workers must be at least 1, not {options.num_workers}")
        if options.cpus_per_worker < 1:
            raise OptionError(
                f"--cpus-per-worker must be at least 1, not {options.cpus_per_worker}"
            )
        gpus = self.gpus_per_worker
        if gpus < 0:
            raise OptionError(f"--gpus-per-worker must be 0 or more, not {gpus}")
        if gpus > 0 and self.device != "cuda":
            raise OptionError(f"--gpus-per-worker {gpus:g} needs --device cuda")
        if self.device == "cuda" and gpus == 0:
            raise OptionError(
                "--device cuda on Ray needs --gpus-per-worker above 0: Ray places actors on "
                "GPUs, and keeps them apart, only by the GPUs they reserve"
            )
        if self.threads:
            raise OptionError(
                "--threads sets the local engine's ONNX Runtime threads; on Ray each worker "
                "runs --cpus-per-worker threads"
            )
        if self.streams not in (0, 1):
            raise OptionError(
                "--streams is the local engine's; on Ray, run more workers (--num-workers)"
            )

    @property
    def gpus_per_worker(self) -> float:
        """GPUs each Ray actor reserves: the option, else 1 with device "cuda", else 0."""
        gpus = self.ray.gpus_per_worker
        if gpus is None:
            return 1.0 if self.device == "cuda" else 0.0
        return gpus


class StopFlag:
    """SIGTERM / SIGINT set a flag that the engine checks between chunks (main thread only)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        self.install()
        return self

    def install(self) -> None:
        """Take SIGTERM and SIGINT (again, after a library such as Ray replaced the handlers)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Outside the main thread (an Airflow worker thread) handlers cannot be set.
            with contextlib.suppress(ValueError):
                previous = signal.signal(sig, self._handle)
                self.previous.setdefault(sig, previous)

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


T = TypeVar("T")


def chunks(
    items: Iterable[T],
    text_of: Callable[[T], str | None],
    chunk_docs: int,
    chunk_chars: int,
    part_docs: int | None = None,
    done: int = 0,
    stopping: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[list[T], bool]]:
    """The chunks of documents annotate tags together, as (items, whether a part ends there).

    An item with a text (a document) counts toward its chunk; one without (a reject) rides
    along in it. A chunk ends when it holds `chunk_docs` documents or, when they are long,
    `chunk_chars` characters; where a part ends (every `part_docs` items of the stream, counted
    on from `done` items committed before); at the end of the stream; and, once `stopping()`
    says so, wherever it holds no document. Chunk bounds so follow from the settings and the
    input alone: a resumed run and the in-memory API form the batches of an uninterrupted run."""
    chunk: list[T] = []
    documents = chars = 0
    position = done
    for item in items:
        chunk.append(item)
        position += 1
        text = text_of(item)
        if text is not None:
            documents += 1
            chars += len(text)
        part_ends = part_docs is not None and position % part_docs == 0
        if part_ends or documents >= chunk_docs or chars >= chunk_chars:
            yield chunk, part_ends
        elif not documents and stopping():
            yield chunk, False
        else:
            continue
        chunk, documents, chars = [], 0, 0
    if chunk:
        yield chunk, False


def tag_in_chunks(
    tagger: Tagger,
    texts: list[str],
    chunk_docs: int,
    chunk_chars: int,
    part_docs: int | None = None,
) -> Iterator[tuple[int, list[Span]]]:
    """(sub-tokens, spans) of each text, tagged in the chunks the local engine forms for a
    stream of these texts (`chunks`). The Ray workers and the in-memory API tag with it."""
    for chunk, _ in chunks(texts, lambda text: text, chunk_docs, chunk_chars, part_docs):
        encoded = tagger.encoder.encode_batch(chunk)
        spans = tagger.spans_of(chunk, tagger.predict(encoded))
        for enc, text_spans in zip(encoded, spans, strict=True):
            yield len(enc), text_spans
