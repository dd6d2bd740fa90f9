"""Run-directory locks (``e4e.fileio.DirLock``): one winner when many processes find one dead lock,
locks of other hosts that expire without a heartbeat, and errors that say how to clear a lock."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e4e import fileio as F
from e4e.fileio import LOCK_NAME, DirLock, LockedError, lock_info

N_RACERS = 8
ROUNDS = 4
ROOT = Path(__file__).resolve().parents[1]

# One racer process: for each folder, all N try together (a barrier of files) to take its dead lock;
# the winner holds it until everybody has tried, then checks that the lock file is still its own.
# Every read of a lock file is followed by a random pause of up to 10 ms: the window between judging
# a lock dead and acting on it, where the races are, is wide open in every round.
_RACER = r'''
import json, os, random, sys, time
from pathlib import Path
from e4e import fileio
from e4e.fileio import DirLock, LockedError

sync, me, n, dirs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
rng, read = random.Random(os.getpid()), fileio._read_lock

def slow(*a, **k):
    out = read(*a, **k)
    time.sleep(rng.uniform(0, 0.01))
    return out

fileio._read_lock = slow

def barrier(name):
    (sync / f"{name}.{me}").touch()
    deadline = time.monotonic() + 60
    while len(list(sync.glob(f"{name}.*"))) < n:
        if time.monotonic() > deadline:
            sys.exit(f"barrier {name}: timed out")
        time.sleep(0.002)

for r, d in enumerate(dirs):
    barrier(f"a{r}")
    lock, err = DirLock(d), None
    try:
        lock.acquire()
    except LockedError as exc:
        err = str(exc)
    except Exception as exc:
        err = f"UNEXPECTED {type(exc).__name__}: {exc}"
    barrier(f"b{r}")   # everybody has tried
    survived = None
    if err is None:
        try:
            survived = json.loads((Path(d) / ".lock").read_text()).get("pid") == os.getpid()
        except (OSError, ValueError):
            survived = False
    print(json.dumps({"dir": d, "pid": os.getpid(), "error": err, "survived": survived}), flush=True)
    barrier(f"c{r}")   # nobody releases before every winner looked
    if err is None:
        lock.release()
'''


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except OSError:
        return 4194304


def _plant(folder: Path, info: dict, age_s: float = 0.0) -> Path:
    """A lock file left by someone else, its heartbeat (mtime) ``age_s`` old."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps(info))
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def _wait_until(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_racing_processes_take_over_a_dead_lock_exactly_once(tmp_path):
    """8 processes find one dead lock at once, in 4 rounds (each dead for another reason): exactly one
    takes it over, the others are told it is in use, and nobody deleted the winner's lock file."""
    me = socket.gethostname()
    kinds = [
        ({"pid": _pid_max() + 1, "host": me, "started": "then"}, 0),                 # its process exited
        ({"pid": 4242, "host": "node-that-died", "started": "then"}, 3600),         # other host, no heartbeat
        ({"pid": os.getpid(), "host": me, "pid_start": -1, "started": "then"}, 0),  # its pid is another process now
        ({}, 3600),                                                                  # names no owner, and old
    ]
    dirs = [_plant(tmp_path / f"round{r}", *kinds[r % len(kinds)]).parent for r in range(ROUNDS)]
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(sync), str(i), str(N_RACERS), *map(str, dirs)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(N_RACERS)]
    rows = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        rows += [json.loads(line) for line in out.splitlines()]
    for d in dirs:
        mine = [r for r in rows if r["dir"] == str(d)]
        winners = [r for r in mine if r["error"] is None]
        assert len(mine) == N_RACERS
        assert len(winners) == 1, (d.name, mine)
        assert winners[0]["survived"] is True, (d.name, "the winner's lock file was deleted or replaced", mine)
        errors = [r["error"] for r in mine if r["error"] is not None]
        assert all(f"in use by pid {winners[0]['pid']} on {me}" in e for e in errors), errors
        assert not (d / LOCK_NAME).exists()
        assert not list(d.glob(LOCK_NAME + "*")), list(d.iterdir())   # no claims or temporary files left


def test_lock_of_another_host_is_busy_while_its_heartbeat_is_fresh(tmp_path, monkeypatch):
    monkeypatch.delenv("E4E_LOCK_TIMEOUT_S", raising=False)
    path = _plant(tmp_path / "run", {"pid": 4242, "host": "node7", "started": "2024-01-01 10:00:00"}, age_s=60)
    with pytest.raises(LockedError) as info:
        DirLock(path.parent).acquire()
    msg = str(info.value)
    assert "in use by pid 4242 on node7" in msg and "since 2024-01-01 10:00:00" in msg
    assert re.search(r"last heartbeat \S+ \S+, 6\d s ago", msg), msg
    beat = path.stat().st_mtime
    assert f"delete {path}" in msg and f"wait until {F._stamp(beat + 600)}" in msg and "E4E_LOCK_TIMEOUT_S" in msg
    assert json.loads(path.read_text())["pid"] == 4242            # untouched
    info = lock_info(path.parent)
    assert info["alive"] and info["expires_at"] == F._stamp(beat + 600)

    # ten minutes later (the clock moves, no heartbeat came): dead, and taken over
    monkeypatch.setattr(F, "_now", lambda: beat + 601)
    assert not lock_info(path.parent)["alive"]
    with DirLock(path.parent, heartbeat_s=60):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_lock_timeout_from_the_environment(tmp_path, monkeypatch):
    path = _plant(tmp_path / "run", {"pid": 4242, "host": "node7", "started": "then"}, age_s=120)
    monkeypatch.setenv("E4E_LOCK_TIMEOUT_S", "300")
    assert F.lock_timeout_s() == 300 and F.heartbeat_s() <= 75
    with pytest.raises(LockedError, match="300 s without a heartbeat"):
        DirLock(path.parent).acquire()
    monkeypatch.setenv("E4E_LOCK_TIMEOUT_S", "100")
    with DirLock(path.parent):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    monkeypatch.setenv("E4E_LOCK_TIMEOUT_S", "nonsense")
    assert F.lock_timeout_s() == F.LOCK_TIMEOUT_S


def test_same_host_lock_is_judged_by_its_pid(tmp_path):
    """Same host: a live pid holds it whatever its heartbeat; a dead pid, or a pid that another process
    got since (its start time differs), does not."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        path = _plant(tmp_path / "run", {"pid": holder.pid, "host": socket.gethostname(), "started": "now"},
                      age_s=86400)
        with pytest.raises(LockedError) as info:
            DirLock(path.parent).acquire()
        msg = str(info.value)
        assert f"in use by pid {holder.pid}" in msg and f"goes when pid {holder.pid} exits" in msg
        assert f"delete {path}" in msg
    finally:
        holder.kill()
        holder.wait()
    with DirLock(path.parent):
        pass
    _plant(path.parent, {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": -1, "started": "then"})
    lock = DirLock(path.parent).acquire()   # not nested: that pid is not this process's lock
    assert lock.owned and json.loads(path.read_text())["pid_start"] == F._proc_start(os.getpid())
    lock.release()


def test_heartbeat_refreshes_while_held_and_stops_on_release(tmp_path):
    lock = DirLock(tmp_path / "run", heartbeat_s=0.05).acquire()
    path = lock.path
    assert json.loads(path.read_text())["heartbeat_s"] == 0.05
    os.utime(path, (1, 1))   # as if the last heartbeat was long ago
    assert _wait_until(lambda: path.stat().st_mtime > time.time() - 60), "no heartbeat"
    beat = lock._beat
    assert beat.is_alive()
    lock.release()
    assert not beat.is_alive() and not path.exists() and not (tmp_path / "run").exists()


def test_heartbeat_never_touches_a_lock_that_replaced_its_own(tmp_path):
    """A holder whose lock was taken over (it looked dead) notices, keeps its hands off the new lock file,
    and its release leaves the new holder's lock in place."""
    lock = DirLock(tmp_path / "run", heartbeat_s=0.05).acquire()
    path = lock.path
    path.unlink()
    other = _plant(path.parent, {"pid": 4242, "host": "node7", "started": "later"}, age_s=1000)
    assert _wait_until(lambda: lock.lost)
    assert abs(other.stat().st_mtime - (time.time() - 1000)) < 5   # not refreshed by the old holder
    lock.release()
    assert json.loads(other.read_text())["pid"] == 4242


def test_nested_and_writable_checks_still_hold(tmp_path):
    with DirLock(tmp_path / "a" / "b") as outer:
        inner = DirLock(tmp_path / "a" / "b").acquire()   # the same process: nested, not owned
        assert outer.owned and not inner.owned
        inner.release()
        assert (tmp_path / "a" / "b" / LOCK_NAME).exists()
    assert not (tmp_path / "a").exists()   # created by acquire, empty again: removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        DirLock(tmp_path / "file" / "run").acquire()


def test_a_lock_being_taken_over_by_a_live_process_is_busy(tmp_path, monkeypatch):
    """A dead lock that a live process has claimed (it is taking it over right now) is left to it; a claim
    whose process died is passed over, and cleaned away by the new holder."""
    monkeypatch.setattr(F, "TAKEOVER_WAIT_S", 0.1)
    path = _plant(tmp_path / "run", {"pid": _pid_max() + 1, "host": socket.gethostname(), "started": "then"})
    raw, _, st = F._read_lock(path)
    claim0 = Path(f"{F._claims_of(path, raw, st)}.0")
    holder = subprocess.Popen(["sleep", "60"])
    try:
        claim0.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "now"}))
        with pytest.raises(LockedError, match=f"being taken over by pid {holder.pid}") as info:
            DirLock(path.parent).acquire()
        assert f"delete {path}" in str(info.value)
        assert path.exists()
    finally:
        holder.kill()
        holder.wait()
    with DirLock(path.parent):   # the claimant died: claim .1 wins, and the dead claim is cleaned
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert not list(path.parent.glob(F.CLAIM_PREFIX + "*"))


def test_unreadable_lock_is_held_for_a_grace_period(tmp_path):
    path = tmp_path / "run" / LOCK_NAME
    path.parent.mkdir()
    path.write_text("")   # being written by a process on a file system without hard links
    with pytest.raises(LockedError, match="names no owner"):
        DirLock(path.parent).acquire()
    t = time.time() - F.UNREADABLE_GRACE_S - 1
    os.utime(path, (t, t))
    with DirLock(path.parent):
        pass
