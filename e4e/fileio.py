"""File writes that survive kills and concurrent writers: every file is written under a unique
temporary name in its destination folder and renamed into place (``os.replace`` is atomic on one
file system), so a reader sees the old file or the new one, never half of either, and two
processes writing the same path never share a temporary file.

Run-directory locks (``DirLock``): the lock is ``<dir>/.lock`` (JSON: pid, host, pid start time, token),
written under a temporary name and hard-linked to ``.lock`` (fails if it exists), so it appears complete.
Its mtime is a heartbeat, touched by the holder every ``heartbeat_s()``; a lock is dead when its pid is
gone or reused (same host) or its heartbeat is older than ``lock_timeout_s()`` (another host). A dead lock
is removed only by the one process that creates (O_EXCL) the claim ``.lock.takeover.<digest of that file:
content, inode, mtime>.<k>`` and then finds ``.lock`` still that same file; everybody then races to create
``.lock`` again, so exactly one wins and no live lock is ever deleted. A claim whose process died is passed
over (claim ``k + 1``). Assumed: a holder whose heartbeat stalls past the timeout has lost its lock."""
from __future__ import annotations

import errno
import json
import os
import tempfile
import time
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
# run-directory locks (the protocol: module docstring)
# ---------------------------------------------------------------------------------------------
LOCK_NAME = ".lock"
CLAIM_PREFIX = LOCK_NAME + ".takeover."   # claims on a dead lock: .lock.takeover.<digest of it>.<k>
LOCK_TIMEOUT_S = 600.0     # a lock of another host without a heartbeat for this long is dead ($E4E_LOCK_TIMEOUT_S)
HEARTBEAT_S = 30.0         # how often a holder refreshes its lock ($E4E_LOCK_HEARTBEAT_S)
UNREADABLE_GRACE_S = 30.0  # a lock file that names no owner (being written, or left empty) counts as held this long
TAKEOVER_WAIT_S = 2.0      # how long ``acquire`` waits for another process that is taking a dead lock over
_MAX_CLAIMS = 16
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
_now = time.time           # the clock that heartbeats are judged by (tests replace it)


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def lock_timeout_s() -> float:
    """Seconds without a heartbeat after which a lock held on another host is dead and taken over:
    ``$E4E_LOCK_TIMEOUT_S``, else ``LOCK_TIMEOUT_S`` (10 min)."""
    return _env_seconds("E4E_LOCK_TIMEOUT_S", LOCK_TIMEOUT_S)


def heartbeat_s() -> float:
    """Seconds between a holder's heartbeats: ``$E4E_LOCK_HEARTBEAT_S``, else ``HEARTBEAT_S``; at most a
    quarter of ``lock_timeout_s()``, so that a live holder never looks dead."""
    return min(_env_seconds("E4E_LOCK_HEARTBEAT_S", HEARTBEAT_S), lock_timeout_s() / 4)


class LockedError(RuntimeError):
    """The run directory is being used by another live process (``info``: ``lock_info`` of its lock;
    ``taker``: that of a process that is taking a dead lock over right now). The message says who
    holds it and how to clear it."""

    def __init__(self, path: Path, info: dict, taker: dict | None = None):
        super().__init__(describe_lock(path, info, taker))
        self.path, self.info, self.taker = path, info, taker


def _host() -> str:
    import socket

    return socket.gethostname()


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def describe_lock(path: str | os.PathLike, info: dict, taker: dict | None = None) -> str:
    """Who holds the lock file ``path`` (pid, host, since, last heartbeat) and how to clear it."""
    path = Path(path)
    beat = info.get("heartbeat")
    beat = beat if isinstance(beat, (int, float)) else None
    ago = f"last heartbeat {_stamp(beat)}, {max(0.0, _now() - beat):.0f} s ago" if beat is not None else None
    if taker is not None:
        return (f"{path.parent} is being taken over by pid {taker.get('pid')} on {taker.get('host')} (the lock of "
                f"pid {info.get('pid')} on {info.get('host')} was dead); try again in a moment. If neither process "
                f"is running, delete {path} and {path.parent / CLAIM_PREFIX}*")
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int):
        return (f"{path.parent} is locked by {path}, which names no owner (being written, or left empty"
                + (f"; {ago}" if ago else "") + f"); if no process uses {path.parent}, delete {path}"
                + (f", or wait until {_stamp(beat + UNREADABLE_GRACE_S)}" if beat is not None else ""))
    msg = (f"{path.parent} is in use by pid {pid} on {host} (since {info.get('started')}"
           + (f"; {ago}" if ago else "") + "); wait for it or stop it")
    if host == _host():
        return msg + (f". Its lock goes when pid {pid} exits; if pid {pid} is another program by now, "
                      f"delete {path}")
    msg += f". If that process is gone (its node died), delete {path}"
    if beat is not None:
        msg += (f", or wait until {_stamp(beat + lock_timeout_s())}, when the lock expires "
                f"({lock_timeout_s():.0f} s without a heartbeat; $E4E_LOCK_TIMEOUT_S)")
    return msg


def _read_lock(path: Path) -> tuple[bytes, dict, os.stat_result] | None:
    """(content, info, stat) of the lock file ``path``, read from one open file, or None when there is
    none. ``info``: its JSON (pid, host, started, ...) with ``heartbeat`` (its mtime), ``heartbeat_at``,
    ``expires_at`` (another host) and ``alive``."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read(1 << 16)
    except FileNotFoundError:
        return None
    except OSError:   # not readable by this user: judged by its age alone
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        raw = b""
    try:
        info = json.loads(raw)
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    info["heartbeat"] = st.st_mtime
    info["heartbeat_at"] = _stamp(st.st_mtime)
    if isinstance(info.get("pid"), int) and info.get("host") != _host():
        info["expires_at"] = _stamp(st.st_mtime + lock_timeout_s())
    info["alive"] = (_alive(info) if isinstance(info.get("pid"), int)
                     else _now() - st.st_mtime < UNREADABLE_GRACE_S)
    return raw, info, st


def lock_info(directory: str | os.PathLike) -> dict | None:
    """The lock of ``directory`` (pid, host, started, heartbeat, heartbeat_at, alive; ``expires_at`` for
    a lock of another host) or None when there is none."""
    seen = _read_lock(Path(directory) / LOCK_NAME)
    return None if seen is None else seen[1]


def _proc_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc), or None where that cannot be read:
    told apart from a later process that got the same pid."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(info: dict) -> bool:
    """Whether the process of a lock (or of a run: ``pid``, ``host``) lives. Same host: the pid exists
    (and, where the lock recorded it, started when the lock's process did: not a reused pid). Another
    host: its ``heartbeat`` (an epoch time) is younger than ``lock_timeout_s()``; without one, it is
    assumed alive (its process cannot be seen from here)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if info.get("host") != _host():
        beat = info.get("heartbeat")
        if not isinstance(beat, (int, float)):
            return True
        return _now() - beat < lock_timeout_s()
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass
    start = info.get("pid_start")
    if isinstance(start, int) and not isinstance(start, bool):
        now = _proc_start(pid)
        if now is not None and now != start:
            return False
    return True


def _lock_content(interval: float) -> bytes:
    import uuid

    pid = os.getpid()
    return json.dumps({"pid": pid, "host": _host(), "pid_start": _proc_start(pid),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "heartbeat_s": interval,
                       "token": uuid.uuid4().hex}).encode()


def _create_exclusive(dst: Path, tmp: str, tmp_fd: int, content: bytes) -> int | None:
    """Publish the written file ``tmp`` (open as ``tmp_fd``) at ``dst`` unless ``dst`` exists: a hard
    link, so ``dst`` is complete the moment it appears. Returns a descriptor of the new file (the
    caller closes it), or None when ``dst`` existed. Where the file system has no hard links, ``dst``
    is created with O_EXCL and written after (a reader may see it empty for a moment: such a file
    counts as held for ``UNREADABLE_GRACE_S``)."""
    try:
        os.link(tmp, dst)
        return os.dup(tmp_fd)
    except FileExistsError:   # NFS may answer a retried link that had worked so: is dst this very file?
        try:
            st, own = os.stat(dst), os.fstat(tmp_fd)
        except FileNotFoundError:
            return None
        return os.dup(tmp_fd) if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino) else None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    try:
        fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, content)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(dst).unlink(missing_ok=True)
        raise
    return fd


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """The same lock file, untouched since: inode and mtime (a heartbeat in between means it lives)."""
    return (a.st_dev, a.st_ino, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_mtime_ns)


def _claims_of(path: Path, raw: bytes, st: os.stat_result) -> Path:
    """The stem of the claims on the lock file ``path`` as read (``raw``, ``st``): every process that
    read the same file names the same claims."""
    import hashlib

    digest = hashlib.sha1(raw + f"|{st.st_dev}|{st.st_ino}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return path.parent / f"{CLAIM_PREFIX}{digest}"


def _take_over(path: Path, raw: bytes, st: os.stat_result, tmp: str, tmp_fd: int, content: bytes) -> dict | None:
    """Remove the dead lock file (``raw``, ``st``: as read from ``path``) if this process wins the claim
    on it. Returns None when the caller should try to create its lock again (the dead lock is gone, by
    this process or another), or the info of a live claim (another process is taking it over now)."""
    import glob

    claims = _claims_of(path, raw, st)
    for k in range(_MAX_CLAIMS):
        claim = Path(f"{claims}.{k}")
        fd = _create_exclusive(claim, tmp, tmp_fd, content)
        if fd is not None:
            os.close(fd)
            break
        seen = _read_lock(claim)
        if seen is None:
            return None          # its claimant is done: the dead lock is gone
        if seen[1]["alive"]:
            return seen[1]
        # a claimant that died before it was done: pass it over
    else:
        return seen[1]
    removed = False
    try:
        now = _read_lock(path)
        if now is not None and now[0] == raw and _same_file(now[2], st):
            os.unlink(path)      # only the holder of this claim removes this file, and it is still the dead one
            removed = True
    finally:
        for c in (path.parent.glob(glob.escape(claims.name) + ".*") if removed else [claim]):
            c.unlink(missing_ok=True)
    return None


def _drop_dead_claims(folder: Path) -> None:
    """Claims left by processes that died while taking a lock over (called by the holder of the lock)."""
    import glob

    for c in folder.glob(glob.escape(CLAIM_PREFIX) + "*"):
        seen = _read_lock(c)
        if seen is not None and not seen[1]["alive"]:
            c.unlink(missing_ok=True)


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
    dead process (kill -9; on another host: no heartbeat for ``lock_timeout_s()``) is taken over; the
    same process may enter it again (nested). While held, a daemon thread refreshes the lock's
    heartbeat every ``heartbeat_s`` seconds (default ``heartbeat_s()``); ``lost`` turns True if the
    lock file was taken from this holder (it had looked dead)."""

    def __init__(self, directory: str | os.PathLike, heartbeat_s: float | None = None):
        self.path = Path(directory) / LOCK_NAME
        self.heartbeat_s = heartbeat_s
        self.owned = False
        self.lost = False
        self.created: Path | None = None
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._stop = None
        self._beat = None

    def acquire(self) -> "DirLock":
        if self.owned:
            return self
        folder = self.path.parent
        self.created = _missing_top(folder)
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        interval = self.heartbeat_s or heartbeat_s()
        content = _lock_content(interval)
        tmp_fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_NAME}.{_tmp_host()}-{os.getpid()}.", suffix=".tmp", dir=folder)
        try:
            os.fchmod(tmp_fd, 0o644)
            os.write(tmp_fd, content)
            os.fsync(tmp_fd)
            fd = self._publish(tmp, tmp_fd, content)
        finally:
            os.close(tmp_fd)
            Path(tmp).unlink(missing_ok=True)
        if fd is None:
            return self          # nested: this process holds it already
        st = os.fstat(fd)
        self._fd, self._ident, self.owned, self.lost = fd, (st.st_dev, st.st_ino), True, False
        self._start_heartbeat(interval)
        _drop_dead_claims(folder)
        return self

    def _publish(self, tmp: str, tmp_fd: int, content: bytes) -> int | None:
        """Create the lock file, taking a dead one over; its descriptor, or None (nested)."""
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        info: dict = {}
        while True:
            fd = _create_exclusive(self.path, tmp, tmp_fd, content)
            if fd is not None:
                return fd
            seen = _read_lock(self.path)
            taker = None
            if seen is not None:
                raw, info, st = seen
                if info["alive"] and info.get("pid") == os.getpid() and info.get("host") == _host():
                    return None
                if info["alive"]:
                    raise LockedError(self.path, info)
                taker = _take_over(self.path, raw, st, tmp, tmp_fd, content)
            if time.monotonic() > deadline:
                raise LockedError(self.path, info, taker)
            time.sleep(0.01 if taker is not None else 0.001)

    def _start_heartbeat(self, interval: float) -> None:
        import threading

        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(self._fd, interval, self._stop),
                                      name=f"lock-heartbeat {self.path.parent}", daemon=True)
        self._beat.start()

    def _heartbeat(self, fd: int, interval: float, stop) -> None:
        """Touch the lock file (through its descriptor: never a file that replaced it) every ``interval``
        seconds until ``stop``; notice when the lock file is no longer this one."""
        import logging

        while not stop.wait(interval):
            try:
                if not stop.is_set():
                    os.utime(fd)
            except OSError:
                pass             # a passing error (a network file system): the next beat tries again
            try:
                st = os.stat(self.path)
                ours = (st.st_dev, st.st_ino) == self._ident
            except FileNotFoundError:
                ours = False
            except OSError:
                continue
            if not ours and not self.lost:
                self.lost = True
                logging.getLogger(__name__).warning(
                    "%s was taken over by another process (its heartbeat looked older than %.0f s)",
                    self.path, lock_timeout_s())

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (only if the lock file is still this holder's); folders
        that ``acquire`` created and that are still empty go too (a run that stopped at start-up leaves
        no trace)."""
        if not self.owned:
            return
        self._stop.set()
        self._beat.join(timeout=10)
        os.close(self._fd)        # before the unlink: NFS would keep an open, unlinked file as .nfsXXXX
        self._fd, self.owned = None, False
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                self.path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
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
