"""File writes that survive kills and concurrent writers: every file is written under a unique
temporary name in its destination folder and renamed into place (``os.replace`` is atomic on one
file system), so a reader sees the old file or the new one, never half of either, and two
processes writing the same path never share a temporary file."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def cache_root() -> Path:
    """The project's on-disk cache: ``$E4E_CACHE``, else ``~/.cache/e4e-lab`` (metric references,
    image-folder scans). Everything in it is keyed by content and can be deleted at any time."""
    return Path(os.environ.get("E4E_CACHE") or Path.home() / ".cache" / "e4e-lab")


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be used as an output folder (it or a parent is a file, or the first
    existing parent is not writable), or None. Creates nothing."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """``write(file_object)`` into a unique temporary file beside ``path``, then rename it to ``path``.
    The temporary name carries the writer's host and pid: leftovers of writers that died (kill -9) are
    removed the next time ``path`` is written. A full disk is an ``OSError`` (ENOSPC) naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_tmp_host()}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:  # torch.save reports a failed write ("unexpected pos", "file write failed")
        Path(tmp).unlink(missing_ok=True)
        if not _write_failure(e):
            raise
        raise OSError(errno.ENOSPC, f"writing failed ({str(e).splitlines()[0][:120]}); is the disk full?",
                      str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_failure(e: RuntimeError) -> bool:
    text = str(e)
    return "unexpected pos" in text or "file write failed" in text


STALE_AFTER_S = 600  # a temporary file of unknown origin this old is a leftover (a live writer renames it sooner)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of earlier writes of ``path`` whose writer is gone: the pid named in
    the file name is dead on this host, or (another host, an older name) the file is older than
    ``STALE_AFTER_S``. Returns what was deleted."""
    import glob
    import time

    path = Path(path)
    gone = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        owner = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        host, _, pid = owner.rpartition("-")
        try:
            if host == _tmp_host() and pid.isdigit():
                dead = not _alive({"pid": int(pid), "host": _host()})
            else:
                dead = time.time() - tmp.stat().st_mtime > STALE_AFTER_S
            if dead:
                tmp.unlink()
                gone.append(tmp)
        except OSError:
            continue
    return gone


def _tmp_host() -> str:
    """This host's name as it appears in temporary file names (no dots, at most 32 characters)."""
    return _host().replace(".", "_")[:32]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


# ---------------------------------------------------------------------------------------------
# run-directory locks
# ---------------------------------------------------------------------------------------------
LOCK_NAME = ".lock"


class LockedError(RuntimeError):
    """The run directory is being used by another live process (``info``: its pid, host, start)."""

    def __init__(self, path: Path, info: dict):
        super().__init__(f"{path.parent} is in use by pid {info.get('pid')} on {info.get('host')} "
                         f"(since {info.get('started')}); wait for it or stop it")
        self.path, self.info = path, info


def _host() -> str:
    import socket

    return socket.gethostname()


def lock_info(directory: str | os.PathLike) -> dict | None:
    """The lock of ``directory`` (pid, host, started, alive) or None when there is none."""
    import json

    path = Path(directory) / LOCK_NAME
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        info = {}
    info["alive"] = _alive(info)
    return info


def _alive(info: dict) -> bool:
    """A lock is alive when its process runs (same host: the pid exists). Locks of other hosts
    are assumed alive (their processes cannot be seen from here)."""
    pid = info.get("pid")
    if not isinstance(pid, int):
        return False
    if info.get("host") != _host():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _missing_top(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None: it exists)."""
    top = None
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        top = p
    return top


def _remove_empty(folder: Path, top: Path | None) -> None:
    """``rmdir`` from ``folder`` up to ``top`` while the folders are empty."""
    if top is None:
        return
    for p in [folder, *folder.parents]:
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return


class DirLock:
    """Exclusive use of a run directory by one process: ``with DirLock(out_dir):``. A lock left by a
    dead process (kill -9) is stale and taken over; the same process may enter it again (nested)."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_NAME
        self.owned = False
        self.created: Path | None = None

    def acquire(self) -> "DirLock":
        import json
        import time

        self.created = _missing_top(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = lock_info(self.path.parent) or {}
                if info.get("pid") == os.getpid() and info.get("host") == _host():
                    return self                      # nested: this process holds it already
                if info.get("alive"):
                    raise LockedError(self.path, info) from None
                self.path.unlink(missing_ok=True)    # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": _host(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self.owned = True
            return self
        raise LockedError(self.path, lock_info(self.path.parent) or {})

    def release(self) -> None:
        """Remove the lock; folders that ``acquire`` created and that are still empty go too (a run
        that stopped at start-up leaves no trace)."""
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False
            _remove_empty(self.path.parent, self.created)

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# images: [-1, 1] floats <-> the 8-bit values a PNG holds, image grids
# ---------------------------------------------------------------------------------------------
def to_uint8(x):
    """[..., H, W] floats in [-1, 1] -> uint8 (clamped, rounded), same shape and device."""
    import torch

    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8_hwc(x):
    """[B, 3, H, W] in [-1, 1] -> numpy uint8 [B, H, W, 3] RGB."""
    return to_uint8(x).cpu().permute(0, 2, 3, 1).numpy()


def quantize_8bit(x):
    """[-1, 1] floats -> the same images after a round trip through 8 bits (as a PNG would hold them)."""
    return to_uint8(x).float() / 127.5 - 1


def image_grid(images, nrow: int | None = None, pad: int = 2):
    """[B,3,H,W] in [-1,1] -> numpy uint8 HxWx3 grid, ``nrow`` images a row (white padding)."""
    import math

    import torch

    x = to_uint8(images).cpu()
    b, c, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(b)))
    ncol = int(math.ceil(b / nrow))
    grid = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(b):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
    return grid.permute(1, 2, 0).numpy()


def save_grid(images, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> Path:
    """``image_grid`` written as a PNG (nearest-neighbour ``scale``-fold enlarged)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(image_grid(images, nrow))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path)
    return path
