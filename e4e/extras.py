"""Optional dependency groups (``pyproject.toml`` ``[project.optional-dependencies]``) and the one
way code imports a package from one of them: ``require_extra(module, extra, what)`` imports it, or
raises ``MissingExtraError`` whose message names the extra to install. ``MissingExtraError`` is one
of the user errors of ``e4e.cli.guarded`` (every CLI prints it as one ``error:`` line, exit code 2)
and an ``ImportError`` (code that treats a missing package as "not available", e.g. a metric, still
catches it). Importing this module imports nothing heavy (no torch).

    extra      packages                                           needed for
    faces      dlib-bin, face-recognition-models, insightface     e4e-align, id_dlib, id_insightface
    slurm      submitit                                           e4e-grid --launcher submitit
    server     psycopg2-binary                                    experiments.server (MLflow tracking server on PostgreSQL)
    notebooks  jupyterlab, nbclient, nbformat, jupytext, ipykernel  e4e-report (runs the notebooks)
    dev        pytest, pytest-timeout, pytorch-msssim, scikit-image  the test suite
    all        all of the above                                   (what ``make install`` installs)
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "require_extra", "install_hint"]

# extra -> the import names it provides (the distributions are listed in pyproject.toml)
EXTRAS: dict[str, tuple[str, ...]] = {
    "faces": ("dlib", "face_recognition_models", "insightface"),
    "slurm": ("submitit",),
    "server": ("psycopg2",),
    "notebooks": ("nbclient", "nbformat", "jupytext", "ipykernel", "jupyter_client", "jupyterlab"),
}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that provides it."""


def install_hint(extra: str) -> str:
    return (f"pip install 'e4e-lab[{extra}]' (in a checkout: pip install -e '.[{extra}]'; "
            "`make install` installs every extra)")


def require_extra(module: str, extra: str, what: str) -> ModuleType:
    """``importlib.import_module(module)``; ``MissingExtraError`` naming ``extra`` when the package
    (or a package it needs) is not installed. ``what``: the feature that needs it, for the message."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        detail = f"{missing!r} is not installed" if isinstance(exc, ModuleNotFoundError) else \
            f"{module!r} could not be imported ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"
        raise MissingExtraError(f"{what} needs the optional [{extra}] dependencies: {detail}; "
                                f"{install_hint(extra)}") from exc
