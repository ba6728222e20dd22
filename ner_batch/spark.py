"""Spark: `ner_batch.spark.annotate(df, bundle)` for a DataFrame of texts, and the engine of
`nerbatch annotate --engine spark`.

    from ner_batch.spark import annotate, rejects_of, spans_of
    tagged = annotate(df, "s3://models/minilm", text_col="text", id_col="id")
    spans_of(tagged).write.parquet("s3://bucket/spans/")     # the span rows of `nerbatch annotate`
    rejects_of(tagged).write.parquet("s3://bucket/rejects/") # documents that could not be tagged

Both run the Python workers through `mapInArrow` (Arrow batches in and out), load the bundle
once per Python worker (a module-level cache: Spark reuses its Python workers), and tag with the
local engine's Tagger, chunks, variants, runtimes (`auto` chosen on each executor) and windows.
`annotate` returns one row per span, with the columns and types of the Parquet span schema, plus
a `reason` column: null on span rows; a document that could not be tagged (a null text, text that
is not valid UTF-8) is one row with its `doc_id`, `source` and `reason`, span columns null. So
nothing is dropped silently, and one pass gives both.

The engine (`SparkEngine`) reads the input files on the executors, one Spark task per file, with
the local engine's readers (remote.py, shared with Ray), and the driver commits what comes back
in input order through the Committer: the output, manifest, resume, lock and exit codes of the
local engine. Each task returns its tagged rows as Arrow IPC blocks (one binary value per block),
so the driver turns no row into a Python object.

Deliberately not here: Spark's own writers (their files are not committed with our manifest).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict

import pyarrow as pa
import pyarrow.compute as pc

from .bundle import load_bundle
from .committer import Committer
from .errors import MissingExtraError, NerbatchError, OptionError
from .output import SPAN_SCHEMA
from .plan import RunPlan
from .readers import ReadOptions
from .remote import (
    DOCUMENTS,
    TAGGED,
    consume,
    document_rows,
    errors_translated,
    file_specs,
    open_worker_tagger,
    span_rows,
    tag_table,
    tagger_spec,
    worker_spec,
)
from .run import AnnotateConfig, StopFlag
from .runtimes import for_workers
from .tagger import TaggerOptions

DEFAULT_MASTER = "local[*]"
SOURCE = "spark"  # the `source` of a DataFrame's rows without a source column
REJECTED = "reason"  # the column that marks a rejected document in `annotate`'s result
# `annotate`'s rows: the Parquet span schema and the reject reason, as a Spark DDL string.
_SPARK_TYPES = {pa.string(): "string", pa.int64(): "bigint", pa.float32(): "float"}
ROWS_DDL = ", ".join(
    [f"`{f.name}` {_SPARK_TYPES[f.type]}" for f in SPAN_SCHEMA] + [f"`{REJECTED}` string"]
)
BLOCKS_DDL = "`input` bigint, `block` bigint, `data` binary"  # the engine's Arrow IPC blocks
BLOCK_DOCS = 2048  # documents per block a task returns (fewer when they are long)
BLOCK_CHARS = 4_000_000


def _import_pyspark():
    try:
        import pyspark  # noqa: F401
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise MissingExtraError("pyspark", "spark") from e
    return SparkSession


def session(master: str | None = None):
    """The active Spark session (a notebook, `spark-submit`), or a new one on `master`
    (default `local[*]`) whose Python workers run this interpreter, the one nerbatch is
    installed in (Spark otherwise starts `python3` from PATH, which may lack pyarrow)."""
    spark_session = _import_pyspark()
    active = spark_session.getActiveSession()
    if active is not None and master is None:
        return active
    builder = spark_session.builder.appName("nerbatch")
    # Under spark-submit (which starts this Python with PYSPARK_GATEWAY_PORT set), the master,
    # the Python of the executors and the rest are spark-submit's. Elsewhere: `master` (default
    # local[*]), with the Python workers in this interpreter, where nerbatch is installed.
    if master is not None or "PYSPARK_GATEWAY_PORT" not in os.environ:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.master(master or DEFAULT_MASTER)
            .config("spark.pyspark.python", sys.executable)
            .config("spark.pyspark.driver.python", sys.executable)
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.ui.enabled", "false")
        )
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # broad: no Java, a bad master URL, ... surface as one line
        raise NerbatchError(
            f"cannot start Spark on {master or DEFAULT_MASTER}: {_first_line(e)} (Spark needs "
            "Java 17 or 21: on Debian, apt-get install openjdk-17-jre-headless)"
        ) from e
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# --- the DataFrame API ---------------------------------------------------------------------------


def annotate(
    df,
    bundle: str,
    text_col: str = "text",
    id_col: str = "id",
    source_col: str | None = None,
    *,
    variant: str = "auto",
    device: str = "cpu",
    runtime: str = "auto",
    threads: int = 1,
    max_length: int | None = None,
    stride: int | None = None,
    options: TaggerOptions | None = None,
    chunk_docs: int | None = None,
    chunk_chars: int | None = None,
):
    """The span rows of the texts of `df` (a Spark DataFrame), lazily: one row per entity with
    the Parquet span schema's columns and `reason` (null; see the module docstring for the rows
    of rejected documents). `doc_id` is `id_col` as a string, `source` is `source_col` or
    "spark". `bundle`: a path or URI every executor can read. `threads`: the runtime's threads
    in each Spark task (a task runs on one executor core: keep threads x concurrent tasks at
    most the executor's cores). fp32 rows equal `nerbatch annotate`'s for the same texts;
    quantised scores can differ slightly, as Spark's Arrow batches group the texts otherwise."""
    defaults = AnnotateConfig([], "")
    config = AnnotateConfig(
        [],
        "",
        model=bundle,
        variant=variant,
        device=device,
        runtime=runtime,
        threads=threads,
        max_length=max_length,
        stride=stride,
        chunk_docs=chunk_docs or defaults.chunk_docs,
        chunk_chars=chunk_chars or defaults.chunk_chars,
        **asdict(options or TaggerOptions()),
    )
    config.check()
    columns = _check_columns(df, text_col, id_col, source_col)
    spec, model = driver_spec(config, threads=threads)
    chunking = (config.chunk_docs, config.chunk_chars)

    def tag(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return tag_record_batches(batches, spec, model, chunking)

    return df.select(*columns).mapInArrow(tag, ROWS_DDL)


def spans_of(tagged):
    """The span rows of `annotate`'s result (SPAN_SCHEMA's columns)."""
    from pyspark.sql import functions as F

    return tagged.filter(F.col(REJECTED).isNull()).drop(REJECTED)


def rejects_of(tagged):
    """The documents of `annotate`'s result that could not be tagged: source, doc_id, reason."""
    from pyspark.sql import functions as F

    return tagged.filter(F.col(REJECTED).isNotNull()).select("source", "doc_id", REJECTED)


def _check_columns(df, text_col: str, id_col: str, source_col: str | None):
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    names = df.columns
    for role, name in (("text_col", text_col), ("id_col", id_col), ("source_col", source_col)):
        if name is not None and name not in names:
            raise OptionError(f"{role} {name!r} is not a column of the DataFrame (it has {names})")
    if not isinstance(df.schema[text_col].dataType, StringType):
        raise OptionError(
            f"text_col {text_col!r} is {df.schema[text_col].dataType.simpleString()}, not string"
        )
    source = F.col(source_col).cast("string") if source_col else F.lit(SOURCE)
    return [
        F.col(id_col).cast("string").alias("doc_id"),
        source.alias("source"),
        F.col(text_col).cast("binary").alias("text"),  # decoded in the worker: bad UTF-8 rejects
    ]


def driver_spec(config: AnnotateConfig, threads: int) -> tuple[dict, str]:
    """Check the bundle, variant, runtime and window on the driver (every error before a job
    starts); return what each worker needs to open its tagger, and the bundle id."""
    bundle = load_bundle(config.model)
    precision = bundle.resolve_variant(config.variant, config.device)
    choice, window = for_workers(
        bundle, precision, config.device, config.runtime, config.max_length, config.stride
    )
    spec = worker_spec(
        str(config.model),
        precision,
        choice["runtime"],
        config.device,
        window,
        threads,
        config.tagger_options(),
    )
    return spec, bundle.bundle_id


_TAGGERS: dict[str, object] = {}  # per Python worker: the bundle loads once, not per batch


def worker_tagger(spec: dict):
    import socket

    key = repr(sorted(spec.items()))
    if key not in _TAGGERS:
        _TAGGERS[key] = open_worker_tagger(spec, f"Spark executor {socket.gethostname()}")
    return _TAGGERS[key]


def tag_record_batches(
    batches: Iterator[pa.RecordBatch], spec: dict, model: str, chunking: tuple[int, int]
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: (doc_id, source, text as bytes) batches -> `annotate`'s rows (`model`: the
    bundle id)."""
    tagger = worker_tagger(spec)
    for batch in batches:
        documents = _documents_of(batch)
        tagged = tag_table(tagger, documents, *chunking)
        yield from _rows_of(tagged, model).to_batches()


def _documents_of(batch: pa.RecordBatch) -> pa.Table:
    """A DataFrame batch as DOCUMENTS rows: text that is null or not UTF-8 is a reject."""
    texts, reasons = [], []
    for value in batch.column(2).to_pylist():
        text = reason = None
        if value is None:
            reason = "no text (null)"
        else:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError as e:
                reason = f"text is not valid UTF-8 ({e.reason} at byte {e.start})"
        texts.append(text)
        reasons.append(reason)
    n = batch.num_rows
    return pa.table(
        {
            "input": pa.array([0] * n, pa.int64()),
            "item": pa.array(range(n), pa.int64()),
            "doc_id": batch.column(0),
            "source": batch.column(1),
            "text": pa.array(texts, pa.string()),
            "line": pa.nulls(n, pa.int64()),
            "reason": pa.array(reasons, pa.string()),
            "fatal": pa.nulls(n, pa.string()),
            "bytes": pa.nulls(n, pa.int64()),
        },
        schema=DOCUMENTS,
    )


def _rows_of(tagged: pa.Table, model: str) -> pa.Table:
    """TAGGED rows -> one row per span, and one per rejected document (its reason)."""
    rejected = pc.is_valid(tagged.column("reason"))
    spans = span_rows(tagged.filter(pc.invert(rejected)), model)
    spans = spans.append_column(REJECTED, pa.nulls(spans.num_rows, pa.string()))
    rejects = tagged.filter(rejected)
    n = rejects.num_rows
    reject_rows = pa.table(
        {
            "doc_id": rejects.column("doc_id"),
            "source": rejects.column("source"),
            "start": pa.nulls(n, pa.int64()),
            "end": pa.nulls(n, pa.int64()),
            "label": pa.nulls(n, pa.string()),
            "text": pa.nulls(n, pa.string()),
            "score": pa.nulls(n, pa.float32()),
            "model": pa.array([model] * n, pa.string()),
            REJECTED: rejects.column("reason"),
        }
    )
    return pa.concat_tables([spans.cast(reject_rows.schema), reject_rows])


# --- the engine ----------------------------------------------------------------------------------


class SparkEngine:
    """`annotate --engine spark`: one Spark task per input file reads and tags it on an
    executor; the driver commits the tagged rows in input order."""

    tags_here = False

    def __init__(self, config: AnnotateConfig):
        _import_pyspark()  # before the bundle loads: a missing extra fails at once

    def stop_flag(self) -> StopFlag:
        return StopFlag()

    def run(self, plan: RunPlan, committer: Committer, stop: StopFlag) -> None:
        config = plan.config
        spark = session(config.spark_master)
        stop.install()  # pyspark takes SIGINT when its context starts
        specs = file_specs(plan)
        if not specs:
            return
        spec = tagger_spec(plan, threads=config.threads or 1)
        read = asdict(config.read)
        chunking = (config.chunk_docs, config.chunk_chars)
        cwd = os.getcwd()

        def read_and_tag(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            return tag_files(batches, spec, read, cwd, chunking)

        from pyspark.sql.types import (
            BinaryType,
            DoubleType,
            LongType,
            StringType,
            StructField,
            StructType,
        )

        schema = StructType(
            [
                StructField("input", LongType()),
                StructField("path", BinaryType()),
                StructField("format", StringType()),
                StructField("size", LongType()),
                StructField("mtime", DoubleType()),
                StructField("error", StringType()),
                StructField("remote", BinaryType()),
                StructField("skip", LongType()),
            ]
        )
        rows = [
            (s["input"], s["path"], s["format"], s["size"], float(s["mtime"]), s["error"])
            + (s["remote"], s["skip"])
            for s in specs
        ]
        # One partition per file, in input order: the driver reads the results in that order.
        files = spark.createDataFrame(spark.sparkContext.parallelize(rows, len(rows)), schema)
        blocks = files.mapInArrow(read_and_tag, BLOCKS_DDL).toLocalIterator()
        consume(committer, _tables(blocks), plan.resume[2], stop)


def tag_files(
    batches: Iterator[pa.RecordBatch], spec: dict, read: dict, cwd: str, chunking
) -> Iterator[pa.RecordBatch]:
    """mapInArrow on an executor: file specs -> TAGGED tables of their documents, each as one
    Arrow IPC block (input, block number, bytes)."""
    import socket

    where = f"Spark executor {socket.gethostname()}"
    options = ReadOptions(**read)
    tagger = None
    for batch in batches:
        for file in batch.to_pylist():
            rows, chars, block = [], 0, 0
            for row in document_rows(file, options, cwd, where):
                rows.append(row)
                chars += len(row["text"] or "")
                if len(rows) >= BLOCK_DOCS or chars >= BLOCK_CHARS:
                    tagger = tagger or worker_tagger(spec)
                    yield _block(file["input"], block, tagger, rows, chunking)
                    rows, chars, block = [], 0, block + 1
            if rows:
                tagger = tagger or worker_tagger(spec)
                yield _block(file["input"], block, tagger, rows, chunking)


def _block(input_index: int, block: int, tagger, rows: list[dict], chunking) -> pa.RecordBatch:
    tagged = tag_table(tagger, pa.Table.from_pylist(rows, schema=DOCUMENTS), *chunking)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, TAGGED) as writer:
        writer.write_table(tagged)
    return pa.RecordBatch.from_pydict(
        {"input": [input_index], "block": [block], "data": [sink.getvalue().to_pybytes()]},
        schema=pa.schema([("input", pa.int64()), ("block", pa.int64()), ("data", pa.binary())]),
    )


def _tables(blocks) -> Iterator[pa.Table]:
    """The TAGGED tables of the Arrow IPC blocks, in order; Spark's failures as our errors."""
    for row in errors_translated(blocks, spark_error):
        yield pa.ipc.open_stream(pa.py_buffer(row["data"])).read_all()


# "ner_batch.errors.BundleError: ..." in the traceback Spark relays from a Python worker
_OUR_ERROR = re.compile(
    r"(?m)^(?:ner_batch\.errors\.)?(\w*(?:Bundle|Input|Option|Output)Error): (.+)$"
)


def spark_error(error: BaseException) -> NerbatchError:
    """Our own error raised on an executor (a bundle it cannot load, an unusable input), or one
    line for a failure of Spark's; Spark wraps a worker's exception in its traceback text."""
    from . import errors

    text = str(error)
    ours = _OUR_ERROR.findall(text)
    if ours:
        name, message = ours[-1]
        kind = getattr(errors, name, NerbatchError)
        return kind(message.strip())
    return NerbatchError(
        f"the Spark job failed: {type(error).__name__}: {_first_line(error)}; the output stays "
        "resumable from its last committed part (--debug shows the traceback)"
    )


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
