"""A grid call: the parent MLflow run, the child run of each member (picked under the member's lock),
the schedule that respects dependencies and ``--jobs``, and the parent's summary.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from e4e.inverters import OPTIM_METHODS
from e4e.tracking import DEFAULT_TRACKING_URI

from experiments.grid.spec import (DEFAULT_RUNS_DIR, GridError, GridSpec, METHOD_WORDS, REPO_ROOT, STAGE_TAG,
                                   SWITCH_WORDS, check_members)
from experiments.grid.plan import (MemberResult, MemberTask, _absolute_sqlite, _client, _ensure_store_dir, _latest_run,
                                   open_store, plan)
from experiments.grid.member import _mark_failed, _summary_checkpoint, _task_config, run_member
from experiments.grid.launchers import LAUNCHERS, _threads_per_job
from experiments.grid.tables import ACTION_WORDS, format_plan, parent_note

# ================================================================================================
# a grid call
# ================================================================================================
def _create_child(client, exp_id: str, task: MemberTask, parent_id: str, sha: str) -> str:
    from e4e.tracking import source_tags

    tags = {"mlflow.parentRunId": parent_id, "mlflow.runName": task.member.name, "grid": task.grid,
            "member": task.member.name, "method": task.member.method, "domain": task.domain,
            "profile": task.profile, "git_sha": sha, "config_hash": task.config_hash,
            "grid.order": str(task.member.order), "out_dir": task.out_dir, STAGE_TAG: "queued",
            **source_tags(GRID_SOURCE_TYPE)}
    if task.member.depends_on:
        tags["depends_on"] = ",".join(task.member.depends_on)
    tags.update(member_tags(task))
    run = client.create_run(exp_id, run_name=task.member.name, tags=tags)
    return run.info.run_id


#: ``mlflow.source.type`` of the grid's runs: a grid runs its members unattended, as a batch job
GRID_SOURCE_TYPE = "JOB"


def _backfill_tags(client, task: MemberTask, sha: str) -> None:
    """A run resumed by this grid call: the commit it now runs (``mlflow.source.git.commit`` follows
    ``git_sha``), and the tags that runs created before they existed lack (``steps`` / ``seed``,
    MLflow's source tags)."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    from e4e.tracking import set_tags, source_tags

    have = client.get_run(task.run_id).data.tags
    want = {**source_tags(GRID_SOURCE_TYPE), **{k: v for k, v in member_tags(task).items() if k in ("steps", "seed")}}
    tags = {k: v for k, v in want.items() if k not in have}
    if sha != "unknown":
        tags[MLFLOW_GIT_COMMIT] = sha.removesuffix("-dirty")
    if tags:
        set_tags(client, task.run_id, tags)




def member_tags(task: MemberTask) -> dict[str, str]:
    """``delta_reg`` / ``adversarial`` / ``progressive`` = on | off | n/a (optimisation baselines train
    nothing) from the member's resolved config, ``steps`` (its ``max_steps``; n/a for the optimisation
    baselines) and ``seed``, so that grouping the runs by a switch can be split by length, and
    ``mlflow.note.content``: what the member is."""
    method = task.member.method
    words = METHOD_WORDS.get(method, method)
    resolved = None if task.error else _task_config(task)
    if method in OPTIM_METHODS or task.error:
        tags = {k: "n/a" for k in SWITCH_WORDS}
        cfg = None
    else:
        cfg = resolved
        tags = {k: "on" if getattr(cfg, k).enabled else "off" for k in SWITCH_WORDS}
    if resolved is not None:
        tags["steps"] = str(cfg.max_steps) if cfg is not None else "n/a"
        tags["seed"] = str(resolved.seed)
    if cfg is not None and method == "e4e":
        words += "; " + ", ".join(f"{SWITCH_WORDS[k]} {tags[k]}" for k in SWITCH_WORDS)
    if cfg is not None:
        words += f"; {cfg.max_steps} training steps, batch {cfg.batch_size}"
    if task.member.options:
        off = [SWITCH_WORDS.get(k, k) for k, v in task.member.options.items() if v is False]
        if off:
            words += f". Ablation: {' and '.join(off)} turned off"
    tags["mlflow.note.content"] = words + "."
    return tags


def run_grid(grid: GridSpec, tracking_uri: str = DEFAULT_TRACKING_URI, runs_dir: str | Path = DEFAULT_RUNS_DIR,
             jobs: int = 1, launcher: str = "local", cluster: str | None = None,
             submitit_params: Mapping[str, Any] | None = None, dry_run: bool = False, reevaluate: bool = False,
             progress: bool = True, allow_prepare_commands: bool = False) -> list[MemberResult]:
    """Run (or show, with ``dry_run``) a grid; returns one result per member, in grid order.

    Before anything is written: every member's config must resolve (``check_members``) and every
    ``prepare`` command must be one of the project's own (``prepare_argv``; any command with
    ``allow_prepare_commands``), else a ``GridError``."""
    tracking_uri = _absolute_sqlite(tracking_uri)
    check_members(grid)
    for i, step in enumerate(grid.prepare):
        prepare_argv(grid, i, step["command"], allow_prepare_commands)
    if launcher not in LAUNCHERS:
        raise GridError(f"unknown launcher {launcher!r}; known: {sorted(LAUNCHERS)}")
    if launcher == "submitit" and not dry_run:  # before the store is touched
        from e4e.extras import require_extra

        require_extra("submitit", "slurm", "--launcher submitit")
    if dry_run:   # read-only: not even an empty store is created
        tasks = plan(grid, tracking_uri, runs_dir, None, reevaluate)
        print(format_plan(grid, tasks))
        return [MemberResult(t.member.name, {"skip": "SKIPPED"}.get(t.action, "PLANNED"), t.run_id) for t in tasks]
    prepare(grid, allow_prepare_commands)
    client = open_store(tracking_uri)
    tasks = plan(grid, tracking_uri, runs_dir, client, reevaluate)

    from e4e import tracking

    exp_id = tracking.get_or_create_experiment(client, grid.domain)
    end_stale_parents(client, exp_id)
    sha = tracking.git_sha(REPO_ROOT)
    parent = client.create_run(exp_id, run_name=f"{grid.name}-{grid.profile}-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags={"grid": grid.name, "grid.parent": "true", "profile": grid.profile,
                                     "domain": grid.domain, "git_sha": sha, "launcher": launcher,
                                     "grid.file": grid.path, **_process_tags(),
                                     **tracking.source_tags(GRID_SOURCE_TYPE)})
    parent_id = parent.info.run_id
    with tempfile.TemporaryDirectory() as tmp:   # the resolved grid, as run
        (Path(tmp) / "grid.yaml").write_text(yaml.safe_dump(dataclasses.asdict(grid), sort_keys=False))
        client.log_artifact(parent_id, str(Path(tmp) / "grid.yaml"))
    for t in tasks:
        t.experiment_id, t.parent_run_id = exp_id, parent_id
    print(format_plan(grid, tasks), flush=True)
    served = tracking_uri.lower().startswith(("http://", "https://"))
    print(f"MLflow UI{'' if served else ' (make ui)'}: {tracking.ui_url(exp_id, store=tracking_uri)}", flush=True)
    jobs = max(1, jobs)
    runner = LAUNCHERS[launcher](jobs=jobs, folder=Path(runs_dir) / grid.domain / grid.name / "submitit", cluster=cluster,
                  params=submitit_params or {})
    results: dict[str, MemberResult] = {}
    try:
        _schedule(tasks, runner, client, exp_id, parent_id, sha, jobs, results, progress)
    except BaseException as exc:   # Ctrl-C, SIGTERM turned into SystemExit, or a store error: never left RUNNING
        with contextlib.suppress(Exception):
            client.set_tag(parent_id, "grid.ended", f"{type(exc).__name__}: {exc}"[:4000])
            client.set_terminated(parent_id, "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    finally:
        runner.close()
    ordered = [results[t.member.name] for t in tasks]
    failed = [r for r in ordered if r.status not in OK_STATUSES]
    _log_parent_summary(client, parent_id, ordered)
    client.set_tag(parent_id, "mlflow.note.content", parent_note(grid, client, ordered))
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    return ordered


#: statuses of a grid call that finished its part: a BUSY member is another live process's work
OK_STATUSES = ("FINISHED", "SKIPPED", "BUSY")
#: the project's own commands a grid's ``prepare`` may run: ``python -m <module> <subcommand> ...``
PREPARE_COMMANDS = frozenset({("experiments.synth", "build")})
_PYTHON = ("python", "python3")


def prepare_argv(grid: GridSpec, i: int, command: str, allow_any: bool = False) -> list[str]:
    """The argv ``prepare`` step ``i`` runs (no shell: split with ``shlex``; ``python`` is this
    interpreter). Only ``PREPARE_COMMANDS`` unless ``allow_any`` (``--allow-prepare-commands``)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise GridError(f"{grid.name}: prepare #{i}: cannot split {command!r}: {exc}") from None
    own = len(argv) >= 4 and argv[0] in _PYTHON and argv[1] == "-m" and (argv[2], argv[3]) in PREPARE_COMMANDS
    if not argv or not (own or allow_any):
        known = ", ".join(f"python -m {m} {c}" for m, c in sorted(PREPARE_COMMANDS))
        raise GridError(f"{grid.name}: prepare #{i} would run {command!r}, which is not one of the project's own "
                        f"commands ({known}); run it yourself, or pass --allow-prepare-commands if you trust "
                        f"{grid.path or 'the grid file'}")
    return [sys.executable if argv[0] in _PYTHON else argv[0], *argv[1:]]


def prepare(grid: GridSpec, allow_commands: bool = False) -> None:
    """Run each ``prepare`` command whose ``creates`` path is missing (e.g. render the synth data),
    without a shell; only the project's own commands unless ``allow_commands``."""
    steps = [(step, prepare_argv(grid, i, step["command"], allow_commands)) for i, step in enumerate(grid.prepare)]
    for step, cmd in steps:
        if Path(step["creates"]).exists():
            continue
        if cmd[0] != sys.executable or cmd[1:2] != ["-m"] or tuple(cmd[2:4]) not in PREPARE_COMMANDS:
            print(f"warning: --allow-prepare-commands: running {cmd} from {grid.path or 'the grid file'}",
                  file=sys.stderr, flush=True)
        print(f"preparing {step['creates']}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        if rc != 0 or not Path(step["creates"]).exists():
            raise GridError(f"prepare step failed (exit {rc}; {step['creates']} missing): {step['command']}")
        print(f"prepared {step['creates']} in {time.perf_counter() - t0:.0f}s", flush=True)


def _schedule(tasks, runner, client, exp_id, parent_id, sha, jobs, results, progress) -> None:
    from e4e.progress import Progress

    by = {t.member.name: t for t in tasks}
    pending = []
    for t in tasks:
        if t.action == "skip":
            results[t.member.name] = MemberResult(t.member.name, "SKIPPED", t.run_id,
                                                  checkpoint=_checkpoint_of(client, t))
        elif t.action == "busy":
            results[t.member.name] = MemberResult(t.member.name, "BUSY", t.run_id, error=t.error)
        else:
            pending.append(t)
    running: dict[str, Any] = {}
    bar = Progress(len(pending), f"grid {tasks[0].grid if tasks else ''}", unit="member",
                   disable=not progress or not pending, min_interval=120)
    ok = {"FINISHED", "SKIPPED"}
    while pending or running:
        for t in list(pending):
            if len(running) >= jobs:
                break
            dep_res = [results.get(d) for d in t.member.depends_on]
            busy = [d for d, r in zip(t.member.depends_on, dep_res) if r is not None and r.status == "BUSY"]
            if busy:   # another live process trains the dependency: leave this member (and its run) alone
                pending.remove(t)
                results[t.member.name] = MemberResult(t.member.name, "BUSY", t.run_id,
                                                      f"waits for {', '.join(busy)}, which another process runs")
                bar.update(1)
                continue
            if any(r is not None and r.status not in ok for r in dep_res):
                bad = [d for d, r in zip(t.member.depends_on, dep_res) if r is not None and r.status not in ok]
                pending.remove(t)
                results[t.member.name] = _fail_unstarted(client, exp_id, t, parent_id, sha,
                                                         f"DependencyFailed: {', '.join(bad)} did not finish")
                bar.update(1)
                continue
            if any(r is None for r in dep_res):
                continue
            pending.remove(t)
            t.dependencies = {d: results[d].checkpoint for d in t.member.depends_on if results[d].checkpoint}
            t.threads = _threads_per_job(jobs) if jobs > 1 else None
            claimed = _claim_run(client, exp_id, t, parent_id, sha)
            if claimed is not None:   # another grid holds the member, or finished it since the plan
                results[t.member.name] = claimed
                bar.update(1)
                continue
            bar.set_postfix(running=t.member.name)
            if bar.mode == "lines":
                bar.write(f"  {t.member.name}: started ({ACTION_WORDS.get(t.action, t.action)})")
            running[t.member.name] = runner.submit(run_member, t)
        finished = [n for n, h in running.items() if h.done()]
        if not finished:
            time.sleep(runner.poll_s)
            continue
        for n in finished:
            h = running.pop(n)
            try:
                res = h.result()
            except Exception as exc:  # noqa: BLE001 - the worker process/job died
                msg = f"{type(exc).__name__}: {exc}"
                _mark_failed(client, by[n].run_id, msg, type(exc).__name__, "")
                res = MemberResult(n, "FAILED", by[n].run_id, msg)
            results[n] = res
            bar.update(1)
            bar.write(f"  {n}: {res.status} ({res.seconds:.0f}s)" + (f" — {res.error}" if res.error else ""))
    bar.close()


def _claim_run(client, exp_id, t: MemberTask, parent_id, sha) -> MemberResult | None:
    """Pick the member's run under its directory lock, so that two grids on one store never open
    two runs for one member: look again for a run of this config (another grid may have opened or
    finished one since the plan), else create it. Returns a result when there is nothing to start."""
    from e4e.fileio import DirLock, LockedError

    try:
        with DirLock(t.out_dir):
            prev = _latest_run(client, exp_id, t.grid, t.config_hash)
            if prev is not None and prev.info.run_id != t.run_id:
                t.run_id = prev.info.run_id
                if prev.info.status == "FINISHED" and prev.data.tags.get(STAGE_TAG) == "done" and \
                        t.action != "evaluate":
                    return MemberResult(t.member.name, "SKIPPED", t.run_id, checkpoint=_checkpoint_of(client, t))
                t.action = "resume"
            if t.run_id is not None and _checkpoints_lost(client, t):
                _mark_failed(client, t.run_id, f"checkpoints lost: {t.out_dir} was emptied, so this run's logged "
                             "history cannot be continued; a new run trains the member from step 0", "CheckpointsLost", "")
                t.run_id, t.action = None, "run"
            if t.run_id is None:
                t.run_id = _create_child(client, exp_id, t, parent_id, sha)
            else:
                client.set_tag(t.run_id, "git_sha", sha)
                client.set_tag(t.run_id, "grid.last_parent", parent_id)
                _backfill_tags(client, t, sha)
            client.update_run(t.run_id, status="RUNNING")
    except LockedError as exc:
        return MemberResult(t.member.name, "BUSY", t.run_id, str(exc))
    return None


def _checkpoints_lost(client, t: MemberTask) -> bool:
    """A trained member whose run logged training metrics but whose out_dir lost everything the
    trainer wrote there (a deleted or wiped runs dir; the lock just taken is all it holds): training
    again from step 0 into that run would splice a new training's curve onto the lost one's history.
    (An out_dir with the trainer's config.yaml but no checkpoint -- a member that failed or was
    killed before its first one -- is retried in its own run, as before.)"""
    out = Path(t.out_dir)
    if t.member.method in OPTIM_METHODS or any((out / f).exists() for f in ("config.yaml", "last.pt", "inverter.pt")):
        return False
    return any(k.startswith("train/") for k in client.get_run(t.run_id).data.metrics)


def _fail_unstarted(client, exp_id, t: MemberTask, parent_id, sha, msg) -> MemberResult:
    if t.run_id is None:
        t.run_id = _create_child(client, exp_id, t, parent_id, sha)
    _mark_failed(client, t.run_id, msg, msg.split(":")[0], "")
    return MemberResult(t.member.name, "FAILED", t.run_id, msg)


def _checkpoint_of(client, t: MemberTask) -> str | None:
    """Checkpoint of a finished member: its ``checkpoint`` tag where that file exists (or is a URI),
    else the newest inverter in its out_dir, else the checkpoint logged as an artifact of its run
    (``runs:/<run_id>/best_inverter.pt``: the member ran on another host, or its folder is gone)."""
    from e4e.tracking import checkpoint_artifact, is_artifact_uri

    tags = client.get_run(t.run_id).data.tags if t.run_id else {}
    tag = tags.get("checkpoint")
    if tag and (is_artifact_uri(tag) or Path(tag).exists()):
        return tag
    with contextlib.suppress(FileNotFoundError):
        return str(_summary_checkpoint(None, t))
    return checkpoint_artifact(client, t.run_id, tags) if t.run_id else None









def _process_tags() -> dict[str, str]:
    """``grid.pid`` / ``grid.host``: the process of a grid call, so that a later call can tell that it died."""
    import socket

    return {"grid.pid": str(os.getpid()), "grid.host": socket.gethostname()}


def end_stale_parents(client, exp_id: str) -> list[str]:
    """Mark KILLED the RUNNING parent runs of grid calls whose process is gone (a kill -9 gives no
    chance to say so): same host and no such pid (``e4e.fileio`` decides liveness, as for run-directory
    locks). Runs of other hosts, or without a recorded pid, are left as they are. Returns their ids."""
    from e4e.fileio import _alive

    runs = client.search_runs([exp_id], "tags.`grid.parent` = 'true' and attributes.status = 'RUNNING'",
                              max_results=1000)
    ended = []
    for r in runs:
        tags = r.data.tags
        pid = tags.get("grid.pid", "")
        if not pid.isdigit() or _alive({"pid": int(pid), "host": tags.get("grid.host")}):
            continue
        with contextlib.suppress(Exception):
            client.set_tag(r.info.run_id, "grid.ended", f"process {pid} on {tags.get('grid.host')} was gone "
                                                        f"(found by a later grid call)")
            client.set_terminated(r.info.run_id, "KILLED")
            ended.append(r.info.run_id)
    return ended


def _log_parent_summary(client, parent_id: str, results: list[MemberResult]) -> None:
    rows = [{"member": r.member, "status": r.status, "run_id": r.run_id, "seconds": round(r.seconds, 1),
             "error": r.error} for r in results]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "members.json"
        p.write_text(json.dumps(rows, indent=1))
        client.log_artifact(parent_id, str(p))
    counts = {s: sum(r.status == s for r in results) for s in ("FINISHED", "SKIPPED", "FAILED", "KILLED", "BUSY")}
    for s, n in counts.items():
        client.set_tag(parent_id, f"members.{s.lower()}", str(n))
