"""Every option of every command defaults to the library's default for the same setting.

The options are read from the click group, so a new option fails here until it is listed: in
LIBRARY with the library setting it stands for, or in CLI_ONLY with the reason it has none. The
library side is read here from the library itself (a default instance, a signature), not
through cli.py's own lookup, and the CLI side is what the command's function receives when the
option is not given. Also: the CLI reads those defaults lazily, so `nerbatch --help` loads no
library module.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from types import SimpleNamespace

import click
import pytest

from ner_batch.annotate import annotate
from ner_batch.cli import cli
from ner_batch.corpus import gold_to_corpus
from ner_batch.export import export
from ner_batch.run import AnnotateConfig
from ner_batch.score import score
from ner_batch.train import TrainConfig
from ner_batch.view import ViewOptions, view

PROG = "nerbatch"  # the group's own options are listed under the program's name


def keywords(function) -> SimpleNamespace:
    """A function's keyword defaults, as attributes."""
    parameters = inspect.signature(function).parameters.values()
    return SimpleNamespace(**{p.name: p.default for p in parameters if p.default is not p.empty})


TRAIN = TrainConfig()
EXPORT = keywords(export)
ANNOTATE = AnnotateConfig(inputs=[], output="")
SCORE = keywords(score)
VIEW = keywords(view)
VIEW_OPTIONS = ViewOptions()
GOLD2CORPUS = keywords(gold_to_corpus)

# (command, option) -> the library's default object and the setting's (dotted) name there.
LIBRARY: dict[tuple[str, str], tuple[object, str]] = {
    ("train", "--train"): (TRAIN, "train"),
    ("train", "--dev"): (TRAIN, "dev"),
    ("train", "--dataset"): (TRAIN, "dataset"),
    ("train", "--base-model"): (TRAIN, "base_model"),
    ("train", "--epochs"): (TRAIN, "epochs"),
    ("train", "--lr"): (TRAIN, "lr"),
    ("train", "--batch-size"): (TRAIN, "batch_size"),
    ("train", "--max-length"): (TRAIN, "max_length"),
    ("train", "--seed"): (TRAIN, "seed"),
    ("train", "--warmup"): (TRAIN, "warmup"),
    ("train", "--label-all-subtokens"): (TRAIN, "label_all_subtokens"),
    ("train", "--word-shapes"): (TRAIN, "word_shapes"),
    ("train", "--scheme"): (TRAIN, "scheme"),
    ("train", "--token-column"): (TRAIN, "token_column"),
    ("train", "--tag-column"): (TRAIN, "tag_column"),
    ("train", "--train-on-dev"): (TRAIN, "train_on_dev"),
    ("train", "--average-last"): (TRAIN, "average_last"),
    ("train", "--max-steps"): (TRAIN, "max_steps"),
    ("train", "--fp16"): (TRAIN, "fp16"),
    ("export", "--dev"): (EXPORT, "dev"),
    ("export", "--test"): (EXPORT, "test"),
    ("export", "--variants"): (EXPORT, "variants"),
    ("export", "--stride"): (EXPORT, "stride"),
    ("export", "--keep-failed"): (EXPORT, "keep_failed"),
    ("export", "--max-dev-sentences"): (EXPORT, "max_dev_sentences"),
    ("export", "--max-length"): (EXPORT, "max_length"),
    ("export", "--int8-ops"): (EXPORT, "int8_ops"),
    ("annotate", "--model"): (ANNOTATE, "model"),
    ("annotate", "--variant"): (ANNOTATE, "variant"),
    ("annotate", "--device"): (ANNOTATE, "device"),
    ("annotate", "--runtime"): (ANNOTATE, "runtime"),
    ("annotate", "--batch-size"): (ANNOTATE, "batch_size"),
    ("annotate", "--max-batch-tokens"): (ANNOTATE, "max_batch_tokens"),
    ("annotate", "--max-length"): (ANNOTATE, "max_length"),
    ("annotate", "--stride"): (ANNOTATE, "stride"),
    ("annotate", "--threads"): (ANNOTATE, "threads"),
    ("annotate", "--streams"): (ANNOTATE, "streams"),
    ("annotate", "--segment"): (ANNOTATE, "segment"),
    ("annotate", "--decode"): (ANNOTATE, "decode"),
    ("annotate", "--txt-mode"): (ANNOTATE, "read.txt_mode"),
    ("annotate", "--text-field"): (ANNOTATE, "read.text_field"),
    ("annotate", "--id-field"): (ANNOTATE, "read.id_field"),
    ("annotate", "--encoding-errors"): (ANNOTATE, "read.encoding_errors"),
    ("annotate", "--part-docs"): (ANNOTATE, "part_docs"),
    ("annotate", "--overwrite"): (ANNOTATE, "overwrite"),
    ("annotate", "--engine"): (ANNOTATE, "engine"),
    ("annotate", "--ray-address"): (ANNOTATE, "ray.address"),
    ("annotate", "--num-workers"): (ANNOTATE, "ray.num_workers"),
    ("annotate", "--cpus-per-worker"): (ANNOTATE, "ray.cpus_per_worker"),
    ("annotate", "--gpus-per-worker"): (ANNOTATE, "ray.gpus_per_worker"),
    ("annotate", "--spark-master"): (ANNOTATE, "spark_master"),
    ("annotate", "--progress-every"): (keywords(annotate), "progress_every"),
    ("score", "--model"): (SCORE, "model"),
    ("score", "--predictions"): (SCORE, "predictions"),
    ("score", "--variant"): (SCORE, "variant"),
    ("score", "--runtime"): (SCORE, "runtime"),
    ("score", "--decode"): (SCORE, "decode"),
    ("score", "--json"): (SCORE, "json_path"),
    ("score", "--markdown"): (SCORE, "markdown_path"),
    ("score", "--png"): (SCORE, "png_prefix"),
    ("score", "--batch-size"): (SCORE, "batch_size"),
    ("score", "--label-map"): (SCORE, "label_map"),  # the CLI's text is parsed into the dict
    ("score", "--html"): (SCORE, "html_path"),
    ("view", "--out"): (VIEW, "html_path"),
    ("view", "--sample"): (VIEW_OPTIONS, "sample"),
    ("view", "--seed"): (VIEW_OPTIONS, "seed"),
    ("view", "--label"): (VIEW_OPTIONS, "labels"),
    ("view", "--min-score"): (VIEW_OPTIONS, "min_score"),
    ("view", "--query"): (VIEW_OPTIONS, "query"),
    ("view", "--inputs"): (VIEW_OPTIONS, "inputs"),
    ("view", "--top"): (VIEW_OPTIONS, "top"),
    ("gold2corpus", "--unit"): (GOLD2CORPUS, "unit"),
}

# (command, option) -> why the library has no default to compare it with.
CLI_ONLY: dict[tuple[str, str], str] = {
    (PROG, "--verbose"): "logging is set up by the CLI (cli.setup_logging), not the library",
    (PROG, "--log-format"): "logging is set up by the CLI (cli.setup_logging), not the library",
    (PROG, "--debug"): "a traceback instead of one Error: line is the CLI's error handling",
    (PROG, "--version"): "click's version option, no setting",
    ("train", "--out"): "required on the command line (TrainConfig.out is for library callers)",
    ("export", "--out"): "export() requires `out`; the CLI derives export/<checkpoint name>",
    ("annotate", "--fail-on-reject"): "exit code 3 is the CLI's; the library returns counts",
}


def commands() -> list[tuple[str, click.Command]]:
    return [(PROG, cli), *sorted(cli.commands.items())]


def option_name(option: click.Option) -> str:
    return option.opts[0]  # --text-field (alias --text-column), --word-shapes (--no-...)


CASES = [
    pytest.param(name, option, id=f"{name} {option_name(option)}")
    for name, command in commands()
    for option in command.params
    if isinstance(option, click.Option)
]


def received(command: click.Command, option: click.Option):
    """What the command's function receives for `option` when the command line omits it
    (the default after click's type conversion, as a run sees it)."""
    ctx = command.make_context(PROG, [], resilient_parsing=True)  # required ones may be absent
    return ctx.params[option.name]


def library_default(owner: object, name: str):
    value = owner
    for attr in name.split("."):
        value = getattr(value, attr)
    return value


@pytest.mark.parametrize("command_name, option", CASES)
def test_option_default_is_the_library_default(command_name, option):
    key = (command_name, option_name(option))
    if key in CLI_ONLY:
        return
    assert key in LIBRARY, (
        f"{command_name} {key[1]} is new: add it to LIBRARY with the library setting it "
        "stands for, or to CLI_ONLY with the reason it has none"
    )
    command = dict(commands())[command_name]
    cli_value = received(command, option)
    library_value = library_default(*LIBRARY[key])
    assert (type(cli_value), cli_value) == (type(library_value), library_value), (
        f"{command_name} {key[1]} defaults to {cli_value!r}, the library to {library_value!r}: "
        "take the CLI's default from the library (cli.library_option)"
    )
    if option.is_flag and not option.secondary_opts:
        assert library_value is False, (
            f"{command_name} {key[1]} can only turn the setting on, but the library's default "
            f"is {library_value!r}: make it {key[1]}/--no-{key[1][2:]}"
        )


def test_every_listed_option_exists():
    """A renamed or removed option must not live on in LIBRARY or CLI_ONLY."""
    existing = {(name, option_name(option)) for name, option in (c.values[:2] for c in CASES)}
    assert not (set(LIBRARY) | set(CLI_ONLY)) - existing
    assert not set(LIBRARY) & set(CLI_ONLY)


def test_help_reads_defaults_lazily():
    """Defaults are read when a command needs them: `nerbatch --help` loads no library module,
    and a command's --help loads the module that owns its defaults but no heavy library."""
    code = (
        "import sys\n"
        "from ner_batch.cli import cli\n"
        "def help(*command):\n"
        "    assert cli([*command, '--help'], prog_name='nerbatch', standalone_mode=False) == 0\n"
        "help()\n"
        "light = {'ner_batch', 'ner_batch.cli', 'ner_batch.choices', 'ner_batch.errors'}\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('ner_batch') and m not in light)\n"
        "assert not loaded and 'numpy' not in sys.modules, loaded\n"
        "for command in cli.commands:\n"
        "    help(command)\n"
        "heavy = ('torch', 'transformers', 'onnxruntime', 'ray', 'openvino', 'matplotlib')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, stdout=subprocess.DEVNULL)
