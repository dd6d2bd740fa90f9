"""Planning: for each member its config hash, run directory and what to do with it (run, resume,
retry, skip, busy), read from the MLflow store without changing it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from experiments.grid.spec import DEFAULT_RUNS_DIR, GridError, GridSpec, Member, STAGE_TAG, _merge, config_hash, resolve_config


# ================================================================================================
# planning: what each member needs
# ================================================================================================
@dataclass
class MemberTask:
    """Everything a worker needs to run one member (picklable: crosses process/job boundaries)."""
    grid: str
    domain: str
    profile: str
    member: Member
    config_hash: str
    out_dir: str
    tracking_uri: str
    experiment_id: str
    run_id: str | None = None          # existing child run to resume into (set when scheduled)
    parent_run_id: str | None = None
    action: str = "run"                # run | resume | retry | skip | evaluate
    evaluate: dict[str, Any] = field(default_factory=dict)
    dependencies: dict[str, str] = field(default_factory=dict)   # member name -> checkpoint path
    threads: int | None = None
    previous_status: str | None = None
    previous_stage: str | None = None
    error: str | None = None           # the member cannot run (invalid config): fails with this


@dataclass
class MemberResult:
    member: str
    status: str                        # FINISHED | FAILED | KILLED | SKIPPED
    run_id: str | None = None
    error: str | None = None
    checkpoint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


ACTIONS = {  # (status of the latest run with this config hash, its grid.stage == done) -> action
    ("FINISHED", True): "skip",
    ("FINISHED", False): "resume",     # trained, evaluation interrupted
    ("RUNNING", False): "resume",      # killed without a chance to say so
    ("RUNNING", True): "resume",
    ("KILLED", False): "resume",
    ("KILLED", True): "resume",
    ("SCHEDULED", False): "resume",
    ("FAILED", False): "retry",
    ("FAILED", True): "retry",
}


def member_hash(cfg_hash: str, deps: Iterable[str]) -> str:
    """A member's hash: its config hash, mixed with its dependencies' hashes when it has any."""
    deps = sorted(deps)
    if not deps:
        return cfg_hash
    return hashlib.sha256("|".join([cfg_hash, *deps]).encode()).hexdigest()[:len(cfg_hash)]


def plan(grid: GridSpec, tracking_uri: str, runs_dir: str | Path = DEFAULT_RUNS_DIR,
         client=None, reevaluate: bool = False) -> list[MemberTask]:
    """Resolve every member's config and hash and decide what to do with it (no side effects)."""
    if client is None and _store_exists(tracking_uri):
        client = _client(tracking_uri)
    exp = client.get_experiment_by_name(grid.domain) if client is not None else None
    exp_id = exp.experiment_id if exp is not None else ""
    tasks: dict[str, MemberTask] = {}
    for m in _topological(grid.members):
        error = None
        try:
            h = config_hash(resolve_config(grid, m))
        except Exception as exc:  # noqa: BLE001 - a bad config fails that member only
            error = f"{type(exc).__name__}: {exc}"
            h = "invalid-" + hashlib.sha256(json.dumps(m.overrides, sort_keys=True, default=str).encode()).hexdigest()
        h = member_hash(h, [tasks[d].config_hash for d in m.depends_on])
        out_dir = Path(runs_dir) / grid.domain / grid.name / f"{m.name}-{h[:10]}"
        t = MemberTask(grid.name, grid.domain, grid.profile, m, h, str(out_dir), tracking_uri, exp_id,
                       evaluate=_merge(grid.evaluate, m.evaluate), error=error)
        prev = _latest_run(client, exp_id, grid.name, h) if exp_id else None
        if prev is not None:
            done = prev.data.tags.get(STAGE_TAG) == "done"
            t.run_id = prev.info.run_id
            t.previous_status, t.previous_stage = prev.info.status, prev.data.tags.get(STAGE_TAG)
            t.action = ACTIONS.get((prev.info.status, done), "resume")
            if reevaluate and t.action == "skip":
                t.action = "evaluate"
        if error:
            t.action = "invalid"
        elif t.action != "skip":
            from e4e.fileio import LOCK_NAME, describe_lock, lock_info

            lock = lock_info(out_dir)
            if lock and lock.get("alive"):   # another live process trains it: never resume under it
                t.action = "busy"
                t.error = describe_lock(Path(out_dir) / LOCK_NAME, lock)   # who holds it, how to clear it
        tasks[m.name] = t
    return [tasks[m.name] for m in grid.members]


def _topological(members: list[Member]) -> list[Member]:
    by, out, state = {m.name: m for m in members}, [], {}

    def visit(m: Member, chain: tuple[str, ...]):
        if state.get(m.name) == "done":
            return
        if m.name in chain:
            raise GridError(f"circular depends_on: {' -> '.join(chain + (m.name,))}")
        for d in m.depends_on:
            visit(by[d], chain + (m.name,))
        state[m.name] = "done"
        out.append(m)

    for m in members:
        visit(m, ())
    return out


def _client(uri: str):
    from e4e.tracking import get_client

    return get_client(uri)


def _latest_run(client, exp_id: str, grid: str, h: str):
    runs = client.search_runs([exp_id], filter_string=f"tags.grid = '{grid}' and tags.config_hash = '{h}'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    done = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get(STAGE_TAG) == "done"]
    return (done or runs or [None])[0]


def _absolute_sqlite(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _store_exists(uri: str) -> bool:
    """False only for a sqlite store whose file does not exist yet (nothing to read)."""
    prefix = "sqlite:///"
    return not uri.startswith(prefix) or Path(uri[len(prefix):]).exists()


def _ensure_store_dir(uri: str) -> None:
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        Path(uri[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)


def open_store(uri: str, timeout_s: float = 120.0):
    """A client of the store at ``uri``, its schema created. For a sqlite store this happens under the
    store folder's ``DirLock`` (``e4e.fileio``), waited for up to ``timeout_s``: two grid calls that
    start together on a new store never both create its tables (``table experiments already exists``)."""
    import time

    from e4e.fileio import DirLock, LockedError

    _ensure_store_dir(uri)
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        client = _client(uri)
        client.search_experiments(max_results=1)
        return client
    lock = DirLock(Path(uri[len(prefix):]).parent)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            lock.acquire()
            break
        except LockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:   # the client opens the store, and its first opening creates the schema
        client = _client(uri)
        client.search_experiments(max_results=1)
    finally:
        lock.release()
    return client
