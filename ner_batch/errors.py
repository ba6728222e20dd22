"""The exceptions nerbatch raises. The CLI turns each into one `Error:` line; library callers
(Airflow tasks, notebooks) catch `NerbatchError` or a subclass."""

from __future__ import annotations


class NerbatchError(Exception):
    """Base class: something the user can fix (bad input, bad bundle, bad option)."""


class DataFormatError(NerbatchError):
    """A CoNLL (or other training/gold) file is malformed; names the file and line."""

    def __init__(self, path: str, line: int | None, message: str):
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class SchemeError(NerbatchError):
    """An unknown tag scheme or tag prefix, or an invalid transition at a 1-based `token`."""

    def __init__(self, message: str, token: int | None = None):
        self.token = token  # 1-based position in the sentence, None when no token is at fault
        self.detail = message  # the message without the position
        super().__init__(f"token {token}: {message}" if token is not None else message)


class BundleError(NerbatchError):
    """A model bundle is missing, corrupt, or of an unknown format version."""


class ExportError(NerbatchError):
    """An exported ONNX variant disagrees with the PyTorch model beyond tolerance."""


class OptionError(NerbatchError):
    """An option's value is out of its range (the CLI exits 2, as for click's own checks)."""


class InputError(NerbatchError):
    """An annotate input (file, directory, glob or URI) cannot be used at all."""


class OutputError(NerbatchError):
    """The annotate output cannot be written, or belongs to a different run."""


class Interrupted(NerbatchError):
    """Stopped by SIGTERM / SIGINT after committing the current part; run again to resume."""


class MissingExtraError(NerbatchError):
    """An optional dependency (an extra such as `[train]`) is not installed."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"this command needs the '{module}' package, which is not installed; "
            f"install it with: pip install 'nerbatch[{extra}]'"
        )
