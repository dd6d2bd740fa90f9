"""Launchers: where members run. Each has ``submit(fn, task)`` returning a handle with
``done()`` / ``result()``; ``LAUNCHERS`` maps a ``--launcher`` name to its factory.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping


# ================================================================================================
# launchers: something with submit(fn, task) -> handle with .done() / .result()
# ================================================================================================
class _Finished:
    """A handle for work already done (the in-process launcher)."""

    def __init__(self, fn: Callable, arg: Any):
        self._value, self._exc = None, None
        try:
            self._value = fn(arg)
        except Exception as exc:  # noqa: BLE001 - surfaced by result()
            self._exc = exc

    def done(self) -> bool:
        return True

    def result(self):
        if self._exc is not None:
            raise self._exc
        return self._value


class InlineLauncher:
    """``--launcher local --jobs 1``: members run one after another in this process."""
    poll_s = 0.0

    def submit(self, fn, task):
        return _Finished(fn, task)

    def close(self):
        pass


def _init_worker(threads: int, parent: int) -> None:
    """Worker set-up: its share of the cores, and exit if the grid process dies (an orphaned pool
    worker would otherwise wait for work forever)."""
    import threading

    import torch

    torch.set_num_threads(threads)

    def watch():
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(3)

    threading.Thread(target=watch, name="grid-parent-watchdog", daemon=True).start()


class ProcessLauncher:
    """``--launcher local --jobs N``: members in N spawned processes (fresh interpreters)."""
    poll_s = 0.5

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                           initializer=_init_worker, initargs=(_threads_per_job(jobs), os.getpid()))

    def submit(self, fn, task):
        return self.pool.submit(fn, task)

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class SubmititLauncher:
    """``--launcher submitit``: each member is a submitit job (SLURM via AutoExecutor; ``--cluster
    local`` / ``debug`` use submitit's local executors). Job logs go to ``<runs>/submitit/``."""
    poll_s = 2.0

    def __init__(self, folder: Path, cluster: str | None, params: Mapping[str, Any]):
        from e4e.extras import require_extra

        submitit = require_extra("submitit", "slurm", "--launcher submitit")

        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.executor.update_parameters(**dict(params))

    def submit(self, fn, task):
        return self.executor.submit(fn, task)

    def close(self):
        pass


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))



LAUNCHERS: dict[str, Callable[..., Any]] = {
    "local": lambda jobs, **_: InlineLauncher() if jobs <= 1 else ProcessLauncher(jobs),
    "submitit": lambda jobs, folder, cluster, params, **_: SubmititLauncher(folder, cluster, params),
}
