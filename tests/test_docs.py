"""The README's CLI reference covers the real command line (after sqlite-utils' test_docs.py).

Commands and options are read from the click group at test time, so a new command or option
fails here until README.md documents it: every command has a `### `nerbatch <command>``
section under "## CLI reference", every option string of a command (aliases and `--no-` forms
included) appears in that command's section (the group's own options in the reference's
introduction), every option in a section's synopsis still exists, and every command's `--help`
ends with an `Example:` block of real invocations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from ner_batch.cli import cli

README = Path(__file__).parents[1] / "README.md"
PROG = "nerbatch"


def walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """(path, command) for the group itself (path ()) and every visible command under it."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            if not sub.hidden:
                yield from walk(sub, (*path, name))


COMMANDS = list(walk(cli))
SUBCOMMANDS = [(path, command) for path, command in COMMANDS if path]


def title(path: tuple[str, ...]) -> str:
    return " ".join((PROG, *path))


def option_strings(command: click.Command) -> list[str]:
    return [
        opt
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden
        for opt in (*param.opts, *param.secondary_opts)
    ]


OPTIONS = [
    pytest.param(path, opt, id=f"{' '.join(path) or PROG} {opt}")
    for path, command in COMMANDS
    for opt in option_strings(command)
]


def sections() -> dict[tuple[str, ...], str]:
    """The "## CLI reference" chapter split by command: () is its introduction (the group's
    options), ("train",) the text under "### `nerbatch train`", and so on."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## CLI reference[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, 'README.md has no "## CLI reference" chapter'
    parts = re.split(r"^### (.*)\n", match.group(1), flags=re.M)
    found = {(): parts[0]}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        name = re.fullmatch(rf"`{PROG}((?: [\w-]+)*)`\s*", heading)
        if name:
            found[tuple(name.group(1).split())] = body
    return found


SECTIONS = sections()


def mentions(text: str, opt: str) -> bool:
    """`--stride` in `[--stride N]`, not in `--strides` or `--no-stride`."""
    return re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text) is not None


@pytest.mark.parametrize(
    "path", [path for path, _ in SUBCOMMANDS], ids=[" ".join(p) for p, _ in SUBCOMMANDS]
)
def test_command_has_a_readme_section(path):
    assert path in SECTIONS, f"README.md's CLI reference has no '### `{title(path)}`' section"
    assert f"{title(path)} " in SECTIONS[path], f"no `{title(path)} ...` synopsis in its section"


@pytest.mark.parametrize("path, opt", OPTIONS)
def test_option_is_documented(path, opt):
    where = f"the '### `{title(path)}`' section" if path else "the CLI reference's introduction"
    assert path in SECTIONS, f"README.md's CLI reference has no '### `{title(path)}`' section"
    assert mentions(SECTIONS[path], opt), f"{opt} of `{title(path)}` is not in {where}"


@pytest.mark.parametrize(
    "path", [path for path, _ in SUBCOMMANDS], ids=[" ".join(p) for p, _ in SUBCOMMANDS]
)
def test_synopsis_options_exist(path):
    """An option renamed or removed in the CLI must not live on in the README's synopsis."""
    section = SECTIONS.get(path, "")
    synopsis = "\n".join(re.findall(r"^```bash\n(.*?)^```", section, re.M | re.S))
    documented = set(re.findall(r"(?<![\w-])--[a-z0-9][\w-]*", synopsis))
    command = dict(COMMANDS)[path]
    stale = documented - set(option_strings(command)) - {"--help"}
    assert not stale, f"the synopsis of `{title(path)}` names options it lacks: {sorted(stale)}"


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or PROG for p, _ in COMMANDS])
def test_command_has_help_with_an_example(path, command):
    assert (command.help or "").strip(), f"`{title(path)}` has no help text"
    ctx = click.Context(cli, info_name=PROG)
    for name in path:  # the context chain click builds for `nerbatch <path> --help`
        ctx = click.Context(ctx.command.commands[name], info_name=name, parent=ctx)
    lines = command.get_help(ctx).splitlines()
    # Its own line, then the examples unwrapped (the docstring's \b paragraph keeps them so).
    assert any(line.strip() == "Example:" for line in lines), (
        f"`{title(path)} --help` has no 'Example:' block (or click rewrapped it: put \\b on the "
        "line before 'Example:')"
    )
    example = lines[[line.strip() for line in lines].index("Example:") + 1 :]
    assert any(line.strip().startswith(f"{title(path)} ") for line in example), (
        f"the Example: block of `{title(path)} --help` does not run `{title(path)}`"
    )
