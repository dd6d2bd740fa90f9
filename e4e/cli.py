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
