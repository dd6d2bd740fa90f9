"""What every command-line entry point shares: the argument parser (usage errors are one ``error:``
line), the help formatter (the module docstring verbatim, defaults shown only where there is one),
range-checked argument types, the ``--device auto`` rule, and ``guarded``: the one mapping of errors
a user causes (bad config, wrong or missing file, optional package not installed (``e4e.extras``),
image too large, unreachable or broken MLflow store, unknown device, unwritable path, disk full) to
``error: <message>`` and exit code 2."""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

MAX_MESSAGE = 2000  # characters of an error message (a message never reprs a huge value)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line ``error: <message>`` on stderr and
    exit code 2 (``--help`` shows the usage); subparsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description kept as written; ``(default: X)`` appended when X is a real default (not None,
    not a store_true's False) and the help text does not already show it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = "positive integer" if low == 1 else f"integer >= {low}"
    return parse


positive_int = _int_at_least(1)        # argparse ``type=`` for counts and sizes that must be >= 1
non_negative_int = _int_at_least(0)


def comma_list(text: str) -> list[str]:
    """argparse ``type=`` for a non-empty comma-separated list of names (``--metrics l2,swd``)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text[:40]!r}")
    return items


def resolve_device(spec: str = "auto", local_rank: int | None = None):
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given (``--device``).
    With ``local_rank`` (a torchrun process) a cuda device without an index becomes ``cuda:<local_rank>``.
    A spec that names no device type, or a CUDA / MPS device this machine lacks, is a ``ConfigError``
    (before anything is loaded or written)."""
    import torch

    from e4e.config import ConfigError, check_device

    check_device(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if local_rank is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r}: {torch.cuda.device_count()} CUDA device(s) visible on this machine; "
                          "use --device cpu (device=cpu) or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {spec!r}: MPS is not available on this machine; use cpu or auto")
    return dev


def check_out_dir(path, what: str = "--out") -> Path:
    """An output folder that exists as a folder or can be created (``e4e.fileio.folder_problem``),
    checked before any work; nothing is created. A ``ConfigError`` otherwise."""
    from e4e.config import ConfigError
    from e4e.fileio import folder_problem

    problem = folder_problem(path)
    if problem:
        raise ConfigError(f"{what} {path}: {problem}")
    return Path(path)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (a config typo, a missing or wrong file, a held lock, a run
    that went non-finite, a path that cannot be written, an image too large, a broken MLflow store),
    not a bug: every CLI reports them as one ``error:`` line and exit 2 (``guarded``)."""
    return tuple(t for types, _ in _user_errors() for t in types)


def _first_line(text, limit: int = 300) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[:limit] + "…"


def _os_message(e: OSError) -> str:
    where = f" ({e.filename})" if e.filename is not None else ""
    if e.errno == errno.ENOSPC:
        return f"no space left on device, the write failed{where}; free some space and run again"
    if e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def _user_errors() -> list[tuple[tuple[type[BaseException], ...], object]]:
    """(exception types, message function) rows, first match wins. Library types are looked up only
    when their module is loaded (an exception of a module never imported cannot occur)."""
    from e4e.checkpoints import CheckpointError
    from e4e.config import ConfigError
    from e4e.extras import MissingExtraError
    from e4e.fileio import LockedError
    from e4e.losses import NonFiniteError
    from e4e.weights import WeightsMissingError

    rows: list = [((ConfigError, WeightsMissingError, CheckpointError, LockedError, NonFiniteError,
                    MissingExtraError), str),
                  ((OSError,), _os_message)]
    pil, mlflow, sql = (sys.modules.get(m) for m in ("PIL.Image", "mlflow.exceptions", "sqlalchemy.exc"))
    if pil is not None:
        rows.append(((pil.DecompressionBombError,), lambda e: f"image too large to decode safely: {e}"))
    if mlflow is not None:
        rows.append(((mlflow.MlflowException,), lambda e: f"MLflow: {_first_line(e.message)}"))
    if sql is not None:
        rows.append(((sql.SQLAlchemyError,),
                     lambda e: f"MLflow store database: {_first_line(getattr(e, 'orig', None) or e)}"))
    return rows


def user_error_message(e: BaseException, extra: tuple[type[BaseException], ...] = ()) -> str | None:
    """The one-line ``error:`` text for a user error, None for anything else (a bug: re-raised)."""
    rows = _user_errors() + ([(extra, str)] if extra else [])
    fmt = next((f for types, f in rows if isinstance(e, types)), None)
    if fmt is None:
        return None
    text = fmt(e) or type(e).__name__
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def guarded(*extra: type[BaseException]):
    """Decorator for a CLI ``main(argv) -> int``: the user-error types (plus ``extra``) become
    ``error: <message>`` on stderr and exit code 2, without a traceback."""
    import functools

    def wrap(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except Exception as e:  # noqa: BLE001  (re-raised unless it is a user error)
                msg = user_error_message(e, extra)
                if msg is None:
                    raise
                print(f"error: {msg}", file=sys.stderr)
                return 2
        return run
    return wrap


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device`` as every CLI spells it (resolve it with ``resolve_device``)."""
    parser.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible, else cpu) | cpu | cuda[:N]")


def add_tracking_flag(parser: argparse.ArgumentParser, extra: str = "") -> None:
    """``--tracking-uri`` as every CLI that writes runs spells it: default ``$MLFLOW_TRACKING_URI``,
    else the project's store (``e4e.tracking``)."""
    from e4e.tracking import tracking_uri

    parser.add_argument("--tracking-uri", default=tracking_uri(),
                        help="MLflow tracking URI ($MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)" + extra)


def add_allow_pickle_flag(parser: argparse.ArgumentParser) -> None:
    """``--allow-pickle``: the one way to load a checkpoint that the safe loader refuses."""
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load checkpoints that pickle Python objects (loading such a file runs code from "
                             "it: only for files you trust; every other file loads with weights_only=True)")


def allow_pickle(args) -> bool:
    """The ``--allow-pickle`` choice, with a warning on stderr when it is on."""
    import sys

    on = bool(getattr(args, "allow_pickle", False))
    if on:
        print("warning: --allow-pickle: a checkpoint that pickles Python objects will be loaded, and loading it "
              "runs code from the file", file=sys.stderr)
    return on
