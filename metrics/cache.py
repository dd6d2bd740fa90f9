"""On-disk cache of evaluation references that do not depend on the inverter (the W reference of
``latent_dist_w*``, generator-sample features of ``edit_fid_*``, the attribute readings of
``edit_<attr>``'s reference samples, the real set's FID features): every
member of a grid evaluated against the same generator and data reads them instead of rebuilding them.

Root: ``options['cache_dir']``, else ``$E4E_CACHE``, else ``~/.cache/e4e-lab``. A file's name is a
digest of everything its content depends on (for generator references: the generator's weights, via
``module_digest``), so a changed generator never reads a stale file. Files are tensors in plain
containers, read with ``torch.load(weights_only=True)``; a file that cannot be read is rebuilt;
writes go to a unique temporary name in the same folder and are renamed into place (two processes
building one reference both write complete files; the last rename wins, with identical content).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch

from e4e.fileio import atomic_torch_save
from e4e.fileio import cache_root as default_cache_root
from metrics.registry import EvalContext


def cache_root(ctx: EvalContext) -> Path:
    return Path(ctx.option("cache_dir", None) or default_cache_root())


def module_digest(module: torch.nn.Module) -> str:
    """Content hash of a module's state dict (keys, shapes, dtypes and bytes)."""
    h = hashlib.sha1()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}:{tuple(value.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def tensor_digest(t: torch.Tensor) -> str:
    """Content hash of one tensor (shape, dtype and bytes)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha1(f"{tuple(t.shape)}:{t.dtype}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def generator_digest(ctx: EvalContext) -> str:
    """``module_digest`` of the context's generator, computed once per context."""
    return ctx.cached("generator_digest", lambda: module_digest(ctx.generator))


def key_digest(desc: dict) -> str:
    return hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_on_disk(ctx: EvalContext, kind: str, desc: dict, build: Callable[[], dict],
                   folder: Path | None = None) -> dict:
    """``build()`` (a dict of tensors / numbers), stored under ``<root>/<kind>/<digest of desc>.pt``
    (or ``<folder>/<digest>.pt``) and read back from there by later contexts.
    ``options['cache_dir'] = ''`` disables the disk."""
    if ctx.option("cache_dir", None) == "":  # noqa: PLC1901
        return build()
    path = (folder if folder is not None else cache_root(ctx) / kind) / f"{key_digest(desc)}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or foreign file: rebuild it
            pass
    value = build()
    try:
        atomic_torch_save(value, path)
    except OSError as exc:  # an unwritable cache costs time, never the evaluation
        print(f"warning: evaluation cache not written ({path}: {exc})", file=sys.stderr)
    return value
