"""Progress reporting for long work: a tqdm bar on a terminal, plain lines in logs.

When stderr is a TTY, ``Progress`` is a tqdm bar. Otherwise (CI logs, ``nohup``, a grid member's
output captured to a file) it prints one plain line per ``min_interval`` seconds at most, and one
at the end, e.g. ``train e4e: 300/1500 (20%) 41s elapsed, ~164s left, loss=0.0431``: no carriage
returns in logs. ``E4E_PROGRESS=bar|lines|off`` forces either mode.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def _mode() -> str:
    forced = os.environ.get("E4E_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    return "bar" if sys.stderr.isatty() else "lines"


class Progress:
    """``update(n)``, ``set_postfix(**values)``, ``write(msg)``, ``close()`` (also a context manager)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, min_interval: float = 30.0, leave: bool = True):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.min_interval, self.postfix = min_interval, ""
        self.mode = "off" if disable else _mode()
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=leave)
        self._t0 = self._last = time.monotonic()
        self._n0 = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self._last >= self.min_interval:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg)
        elif self.mode != "off":
            print(msg, file=sys.stderr, flush=True)

    def _line(self) -> None:
        self._last = time.monotonic()
        elapsed = self._last - self._t0
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{elapsed:.0f}s elapsed")
        done = self.n - self._n0
        if self.total and 0 < done and self.n < self.total:
            parts.append(f"~{elapsed / done * (self.total - self.n):.0f}s left")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self.n != self._n0:
            self._line()
        self.mode = "off"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it",
          disable: bool = False, leave: bool = True, min_interval: float = 30.0) -> Iterator[T]:
    """``for x in track(items, "label"):`` with a bar on a TTY, plain lines otherwise."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, disable=disable, leave=leave, min_interval=min_interval) as bar:
        for item in iterable:
            yield item
            bar.update(1)
