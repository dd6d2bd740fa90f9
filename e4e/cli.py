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


def resolve_device(spec: str = "auto"):
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given (``--device``)."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)
