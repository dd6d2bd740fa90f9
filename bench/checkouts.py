"""Running a benchmark worker in another checkout of this repository (the ``*_vs`` benchmarks).

Only the parent process imports this module: a worker runs inside the code under test, which may be
a commit older than this file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def reference_checkout(rev: str, path: str = ""):
    """The root of ``path`` when given, else of ``rev`` checked out into a temporary git worktree of
    this repository (removed on exit)."""
    if path:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(root), rev],
                       check=True, capture_output=True)
        try:
            yield root
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(root)], capture_output=True)


def run_worker(code_root: Path, script: str | os.PathLike, argv: list[str], what: str = "") -> dict:
    """``python <script> --worker <argv>`` in ``code_root`` with only that code on ``PYTHONPATH``; the
    JSON object its last stdout line prints."""
    env = {**os.environ, "PYTHONPATH": str(code_root), "E4E_PROGRESS": "off"}
    out = subprocess.run([sys.executable, str(Path(script).resolve()), "--worker", *argv],
                         cwd=code_root, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        label = f"{code_root} {what}".strip()
        raise RuntimeError(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
