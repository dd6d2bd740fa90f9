"""What every command-line entry point shares: the help formatter (the module docstring verbatim,
defaults shown only where there is one) and the ``--device auto`` rule."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description kept as written; ``(default: X)`` appended when X is a real default (not None,
    not a store_true's False) and the help text does not already show it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def resolve_device(spec: str = "auto", local_rank: int | None = None):
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given (``--device``).
    With ``local_rank`` (a torchrun process) a cuda device without an index becomes ``cuda:<local_rank>``."""
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if local_rank is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (a config typo, a missing or wrong file, a held lock, a run
    that went non-finite), not a bug: every CLI reports them as one ``error:`` line and exit 2."""
    from e4e.checkpoints import CheckpointError
    from e4e.config import ConfigError
    from e4e.fileio import LockedError
    from e4e.losses import NonFiniteError
    from e4e.weights import WeightsMissingError

    return (ConfigError, WeightsMissingError, CheckpointError, LockedError, NonFiniteError, FileNotFoundError,
            NotADirectoryError, PermissionError)


def guarded(*extra: type[BaseException]):
    """Decorator for a CLI ``main(argv) -> int``: the user-error types (plus ``extra``) become
    ``error: <message>`` on stderr and exit code 2, without a traceback."""
    import functools
    import sys

    def wrap(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except Exception as e:  # noqa: BLE001  (re-raised unless it is a user error)
                if not isinstance(e, user_error_types() + extra):
                    raise
                print(f"error: {e}", file=sys.stderr)
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
