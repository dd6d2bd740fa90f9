"""Run an experiment grid: train and evaluate every member, one MLflow child run per member.

    python -m experiments.grid run    experiments/grids/paper_ablation.yaml --domain synth --profile demo
    python -m experiments.grid status experiments/grids/paper_ablation.yaml --domain synth --profile demo
    python -m experiments.grid run    ... --dry-run          # show what would run, start nothing

Grid files (``experiments/grids/*.yaml``)
    A base grid lists the members (domain independent); a per-domain variant
    ``<grid>_<domain>.yaml`` holds only the deltas for that domain (``extends`` the base): the
    domain's experiment config, and for each profile (``demo``, ``paper``) the schedule overrides,
    per-method overrides and the evaluation settings. Dicts merge recursively, lists replace. Member
    names derive from the switches a member sets to a non-default value (``e4e``, ``e4e-no_dreg``,
    ``e4e-no_adv-no_prog``) unless the member gives ``name``. A member may ``depends_on`` another
    (``optim_from_encoder`` is initialised by the trained ``e4e`` member's checkpoint). A profile may
    ``add_members`` that only it runs (the synth demo's 300-step ``e4e-short`` reference).
    A member's config = the domain config (``config``) <- its method's config file
    (``method_config``, e.g. ``experiments/configs/psp.yaml``) <- ``overrides`` (grid, then
    profile, per method, per member) <- its switches; ``--set key=value`` applies last. Grid keys:
    ``prepare`` (commands run when the path they ``create`` is missing, e.g. rendering the synth
    data), ``evaluate`` (metrics, n_images, batch_size, data folder, qualitative edits, options),
    profile ``jobs`` (default ``--jobs``).

MLflow (docs/design.md §5)
    One experiment per domain. One parent run per grid call (tags ``grid``, ``profile``,
    ``domain``). Each member is a nested child run (``mlflow.parentRunId``) named after the member,
    tagged ``grid``, ``member``, ``method``, ``git_sha``, ``config_hash``, ``grid.order`` and
    ``grid.stage`` (``train`` -> ``evaluate`` -> ``done``). A member whose ``config_hash`` already has a
    FINISHED run with ``grid.stage=done`` is skipped; any other run with that hash (killed, failed,
    evaluation interrupted) is resumed: its run id is handed to the trainer, which continues from
    the checkpoint in the member's ``out_dir`` and logs into the SAME run. A failing member (NaN loss,
    missing weights, bad config) is marked FAILED with the error in the ``error`` tag; the grid goes
    on and a re-run retries only what did not finish.

    Evaluation (``experiments.evaluate.evaluate``) on the domain's test set logs ``test/<metric>``,
    tags ``unavailable.<metric>`` for metrics whose weights/inputs are missing, and the artifacts
    ``eval/metrics.json``, ``eval/per_image.csv`` and ``eval/qualitative.npz`` (+ ``.png``): inputs,
    inversions and the same edits for every member, which the notebooks read.

Launchers (docs/design.md §6)
    ``local``: members in this process (``--jobs 1``) or in N spawned processes (``--jobs N``).
    ``submitit``: each member is a submitit job (SLURM on a cluster; ``--cluster local`` or
    ``--cluster debug`` run submitit's local executors, as the tests do).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml
from e4e.cli import HelpFormatter, add_tracking_flag, guarded
from e4e.methods import METHODS, OPTIM_METHODS, TRAINED_METHODS
from e4e.tracking import DEFAULT_TRACKING_URI

__all__ = ["GridSpec", "Member", "MemberTask", "MemberResult", "load_grid", "member_name", "plan",
           "run_grid", "grid_status", "run_member", "results_table", "main"]

DEFAULT_RUNS_DIR = "runs"
STAGE_TAG = "grid.stage"
TEST_PREFIX = "test/"
REPO_ROOT = Path(__file__).resolve().parent.parent

GRID_KEYS = {"grid", "description", "extends", "domain", "config", "method_config", "switches", "method_defaults",
             "members", "overrides", "evaluate", "profiles", "exclude", "default_profile", "prepare"}
PREPARE_KEYS = {"command", "creates", "description"}
PROFILE_KEYS = {"description", "overrides", "methods", "members", "add_members", "evaluate", "exclude", "jobs"}
MEMBER_KEYS = {"method", "name", "depends_on", "overrides", "evaluate"}
SWITCH_KEYS = {"key", "label", "default"}
EVAL_KEYS = {"metrics", "n_images", "batch_size", "qualitative", "options", "data"}


class GridError(ValueError):
    """A grid file or a grid call is invalid (the message says what and where)."""


# ================================================================================================
# grid files
# ================================================================================================
@dataclass
class Member:
    name: str
    method: str
    order: int
    options: dict[str, Any] = field(default_factory=dict)      # switches as the member sets them
    overrides: dict[str, Any] = field(default_factory=dict)    # dotted config key -> value (resolved)
    depends_on: list[str] = field(default_factory=list)
    config_files: list[str] = field(default_factory=list)      # domain config, method config (merge order)
    evaluate: dict[str, Any] = field(default_factory=dict)     # merged over the grid's evaluation spec


@dataclass
class GridSpec:
    name: str
    domain: str
    profile: str
    path: str
    config: str | None                  # the domain's experiment config (TrainConfig deltas)
    members: list[Member]
    evaluate: dict[str, Any]
    prepare: list[dict[str, Any]] = field(default_factory=list)   # commands that create missing inputs
    jobs: int = 1                       # members in flight by default (the profile's `jobs`)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise GridError(f"grid {self.name!r} has no member {name!r}; members: {[m.name for m in self.members]}")


def _read_yaml(path: Path) -> dict:
    from e4e.config import ConfigError, read_yaml

    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    try:
        data = read_yaml(path) or {}
    except ConfigError as exc:   # file:line:column, duplicate keys included
        raise GridError(str(exc)) from None
    if not isinstance(data, dict):
        raise GridError(f"{path}: a grid file is a mapping, got {type(data).__name__}")
    _check_keys(data, GRID_KEYS, str(path))
    return data


def _check_keys(d: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise GridError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _merge(base: Any, delta: Any) -> Any:
    """Recursive dict merge; anything else in ``delta`` replaces ``base``."""
    if isinstance(base, dict) and isinstance(delta, dict):
        out = dict(base)
        for k, v in delta.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(delta)


def _resolve_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a grid file and everything it ``extends`` (merged, the file's own keys last)."""
    path = path.resolve()
    if path in seen:
        raise GridError(f"circular 'extends': {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _resolve_file((path.parent / parent), seen + (path,))
    return _merge(base, data)


def domain_variant(path: Path, domain: str) -> Path | None:
    """``<dir>/<stem>_<domain>.yaml`` next to a base grid, if it exists."""
    cand = path.parent / f"{path.stem}_{domain}.yaml"
    return cand if cand.exists() else None


def _domains_for(path: Path) -> list[str]:
    return sorted(p.stem[len(path.stem) + 1:] for p in path.parent.glob(f"{path.stem}_*.yaml"))


def member_name(method: str, options: Mapping[str, Any], switches: Mapping[str, Mapping],
                defaults: Mapping[str, Any] | None = None) -> str:
    """``method`` + one suffix per switch set to a non-default value, in the switches' order:
    ``no_<label>`` (False), ``<label>`` (True), ``<label>=<value>`` (anything else). ``defaults``
    (the method's switch defaults) take precedence over each switch's own default."""
    parts = [method]
    defaults = defaults or {}
    for opt, sw in switches.items():
        if opt not in options or options[opt] == defaults.get(opt, sw.get("default")):
            continue
        v, label = options[opt], sw.get("label", opt)
        parts.append({True: label, False: f"no_{label}"}.get(v, f"{label}={v}") if isinstance(v, bool)
                     else f"{label}={v}")
    return "-".join(parts)


def load_grid(path: str | Path, domain: str | None = None, profile: str | None = None,
              extra_overrides: Mapping[str, Any] | None = None, only: Iterable[str] | None = None,
              eval_overrides: Mapping[str, Any] | None = None) -> GridSpec:
    """Resolve a grid file for one domain and profile into a ``GridSpec``.

    ``path`` is a base grid (its ``<stem>_<domain>.yaml`` variant is merged in) or a variant file.
    ``extra_overrides`` (dotted keys, e.g. from ``--set``) apply to every member last; ``only``
    restricts the members (their dependencies are kept). ``eval_overrides`` (``--eval``, e.g.
    ``{"n_images": 200, "options.edit_n_ref": 128}``) apply to the evaluation spec last.
    """
    path = Path(path)
    data = _resolve_file(path)
    variant = domain_variant(path, domain) if domain else None
    if variant is not None:
        data = _merge(data, {k: v for k, v in _resolve_file(variant).items() if k != "extends"})
    dom = data.get("domain")
    if domain and dom and dom != domain:
        raise GridError(f"{path} is for domain {dom!r}, not {domain!r}")
    domain = domain or dom
    if not domain:
        raise GridError(f"{path}: no domain; pass --domain (variants: {_domains_for(path) or 'none'})")
    if not dom and variant is None:
        raise GridError(f"no variant of {path.name} for domain {domain!r} (expected "
                        f"{path.parent / f'{path.stem}_{domain}.yaml'}; known: {_domains_for(path) or 'none'})")
    name = data.get("grid") or path.stem
    profiles = data.get("profiles") or {}
    profile = profile or data.get("default_profile") or "demo"
    if profile not in profiles:
        raise GridError(f"grid {name!r} (domain {domain}) has no profile {profile!r}; profiles: {sorted(profiles)}")
    prof = profiles[profile] or {}
    _check_keys(prof, PROFILE_KEYS, f"{name}: profile {profile}")

    switches = data.get("switches") or {}
    for opt, sw in switches.items():
        _check_keys(sw, SWITCH_KEYS, f"{name}: switch {opt}")
        if "key" not in sw:
            raise GridError(f"{name}: switch {opt!r} needs 'key' (the dotted config key it sets)")
    common = {**_flatten(data.get("overrides") or {}), **_flatten(prof.get("overrides") or {})}
    per_method = prof.get("methods") or {}
    per_member = prof.get("members") or {}
    excluded = set(data.get("exclude") or []) | set(prof.get("exclude") or [])

    config = data.get("config")
    if config:
        config = str(_repo_path(config, path))
        if not Path(config).exists():
            raise GridError(f"{name}: domain config {config} not found")
    method_defaults = data.get("method_defaults") or {}
    for meth, d in method_defaults.items():
        _check_keys(d or {}, set(switches), f"{name}: method_defaults.{meth}")
    members: list[Member] = []
    # the grid's members, then those the profile adds (e.g. a short-schedule reference run)
    for i, raw in enumerate(list(data.get("members") or []) + list(prof.get("add_members") or [])):
        raw = {"method": raw} if isinstance(raw, str) else dict(raw)
        opts = {k: raw.pop(k) for k in list(raw) if k in switches}
        _check_keys(raw, MEMBER_KEYS, f"{name}: member #{i} ({raw.get('method')})")
        if "method" not in raw:
            raise GridError(f"{name}: member #{i} has no method")
        method = raw["method"]
        mdefaults = method_defaults.get(method) or {}
        mname = raw.get("name") or member_name(method, opts, switches, mdefaults)
        opts = {**mdefaults, **opts}
        if mname in excluded:
            continue
        overrides = dict(common)
        overrides.update(_flatten(per_method.get(method) or {}))
        overrides.update({switches[o]["key"]: v for o, v in opts.items()})
        overrides.update(_flatten(raw.get("overrides") or {}))
        overrides.update(_flatten(per_member.get(mname) or {}))
        overrides.update(dict(extra_overrides or {}))
        deps = raw.get("depends_on") or []
        files = [config] if config else []
        if data.get("method_config"):
            mc = _repo_path(str(data["method_config"]).format(method=method), path)
            files += [str(mc)] if mc.exists() else []
        m_eval = raw.get("evaluate") or {}
        _check_keys(m_eval, EVAL_KEYS, f"{name}: member {mname} evaluate")
        members.append(Member(mname, method, i, opts, overrides, [deps] if isinstance(deps, str) else list(deps),
                              files, m_eval))
    names = [m.name for m in members]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GridError(f"{name}: duplicate member names {dup}; give them distinct options or a 'name'")
    for m in members:
        missing = [d for d in m.depends_on if d not in names]
        if missing:
            raise GridError(f"{name}: member {m.name!r} depends on {missing}, not in the grid (members: {names})")
    if only:
        wanted = set(only)
        unknown = sorted(wanted - set(names))
        if unknown:
            raise GridError(f"--members: unknown {unknown}; members: {names}")
        closure = _with_dependencies(members, wanted)
        members = [m for m in members if m.name in closure]
    evaluate = _merge(data.get("evaluate") or {}, prof.get("evaluate") or {})
    evaluate = _merge(evaluate, _nest(eval_overrides or {}))  # --eval: dotted keys, applied last
    _check_keys(evaluate, EVAL_KEYS, f"{name}: evaluate")
    prepare = list(data.get("prepare") or [])
    for i, step in enumerate(prepare):
        _check_keys(step, PREPARE_KEYS, f"{name}: prepare #{i}")
        if not {"command", "creates"} <= set(step):
            raise GridError(f"{name}: prepare #{i} needs 'command' and 'creates'")
    jobs = int(prof.get("jobs") or 1)
    return GridSpec(name, domain, profile, str(path), config, members, evaluate, prepare, jobs)


def _repo_path(p: str, near: Path) -> Path:
    """Paths in grid files are relative to the repository root (else to the grid file)."""
    p = Path(p)
    if p.is_absolute():
        return p
    return REPO_ROOT / p if (REPO_ROOT / p).exists() or not (near.parent / p).exists() else near.parent / p


def _with_dependencies(members: list[Member], wanted: set[str]) -> set[str]:
    by = {m.name: m for m in members}
    out, todo = set(), list(wanted)
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(by[n].depends_on)
    return out


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_dotlist(items: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=true"]`` -> ``{"a.b": 1, "c": True}`` (``e4e.config.parse_dotlist``, as a GridError)."""
    from e4e import config as C

    try:
        return C.parse_dotlist(items)
    except C.ConfigError as e:
        raise GridError(str(e)) from None


# ================================================================================================
# the project's pieces this runner drives (imported lazily: no side effects at import)
# ================================================================================================


def resolve_config(grid: GridSpec, member: Member, out_dir: Path | None = None):
    """The member's typed config: domain config file <- member overrides (<- out_dir)."""
    from e4e import config as C

    overrides = dict(member.overrides)
    overrides["model.method"] = member.method
    if out_dir is not None:
        overrides["out_dir"] = str(out_dir)
    return C.build_config(list(member.config_files), overrides=_nest(overrides))


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise GridError(f"override {key!r} conflicts with a scalar override of {p!r}")
        node[leaf] = v
    return out


def config_hash(cfg) -> str:
    from e4e import config as C

    return C.config_hash(cfg)


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
            from e4e.fileio import lock_info

            lock = lock_info(out_dir)
            if lock and lock.get("alive"):   # another live process trains it: never resume under it
                t.action = "busy"
                t.error = f"in use by pid {lock.get('pid')} on {lock.get('host')} since {lock.get('started')}"
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


# ================================================================================================
# one member (runs in the worker: this process, a spawned process, or a submitit job)
# ================================================================================================
def run_member(task: MemberTask) -> MemberResult:
    """Train (or build) the member's inverter, evaluate it, log everything into ``task.run_id``.

    Never raises for a member failure: the run is marked FAILED with the error as a tag and the
    result says so. KeyboardInterrupt marks it KILLED and propagates.
    """
    t0 = time.perf_counter()
    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    from e4e.fileio import DirLock, LockedError

    lock = DirLock(task.out_dir)
    try:
        lock.acquire()
    except LockedError as exc:   # another grid started it after this one planned: leave its run alone
        return MemberResult(task.member.name, "BUSY", task.run_id, str(exc), None, {}, time.perf_counter() - t0)
    try:
        return _run_member(task, t0)
    finally:
        lock.release()


def _run_member(task: MemberTask, t0: float) -> MemberResult:
    client = _client(task.tracking_uri)
    run_id = task.run_id
    try:
        client.set_tag(run_id, STAGE_TAG, "train")
        for k in ("error", "error.type", "error.traceback"):
            with contextlib.suppress(Exception):
                client.delete_tag(run_id, k)
        if task.error:
            raise GridError(task.error)
        stage = METHOD_STAGES.get(task.member.method)
        if stage is None:
            raise GridError(f"unknown method {task.member.method!r}; known: {sorted(METHOD_STAGES)}")
        inverter, checkpoint = stage(task)
        if checkpoint:
            client.set_tag(run_id, "checkpoint", str(checkpoint))
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, STAGE_TAG, "evaluate")
        metrics = evaluate_member(task, inverter, client)
        client.set_tag(run_id, STAGE_TAG, "done")
        client.set_terminated(run_id, "FINISHED")
        return MemberResult(task.member.name, "FINISHED", run_id, None, checkpoint, metrics, time.perf_counter() - t0)
    except KeyboardInterrupt:
        _mark_failed(client, run_id, "interrupted", "KeyboardInterrupt", "", status="KILLED")
        raise
    except Exception as exc:  # noqa: BLE001 - report and go on with the grid
        msg = f"{type(exc).__name__}: {exc}"
        _mark_failed(client, run_id, msg, type(exc).__name__, traceback.format_exc())
        return MemberResult(task.member.name, "FAILED", run_id, msg, None, {}, time.perf_counter() - t0)


def _mark_failed(client, run_id: str | None, msg: str, etype: str, tb: str, status: str = "FAILED") -> None:
    if not run_id:
        return
    with contextlib.suppress(Exception):
        client.set_tag(run_id, "error", msg[:4000])
        client.set_tag(run_id, "error.type", etype)
        if tb:
            client.set_tag(run_id, "error.traceback", tb[-4000:])
        client.set_terminated(run_id, status)


def _task_config(task: MemberTask):
    grid = GridSpec(task.grid, task.domain, task.profile, "", None, [task.member], task.evaluate)
    return resolve_config(grid, task.member, Path(task.out_dir))


def _train_stage(task: MemberTask):
    """Encoders: the one trainer (resumes from ``out_dir`` into ``task.run_id``)."""
    from e4e.checkpoints import load_inverter
    from e4e.train import train

    cfg = _task_config(task)
    summary = train(cfg, run_id=task.run_id, tracking_uri=task.tracking_uri)
    bad = {k: v for k, v in (summary.get("final_losses") or {}).items()
           if isinstance(v, (int, float)) and not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"non-finite training loss at step {summary.get('step')}: {bad}")
    ckpt = _summary_checkpoint(summary, task)
    return load_inverter(ckpt), str(ckpt)


def _optim_stage(task: MemberTask):
    """Optimisation baselines: nothing to train; the inverter optimises at evaluation time."""
    from baselines import optim

    cfg = _task_config(task)
    _log_params(task, cfg)
    encoder = next(iter(task.dependencies.values()), None)
    return optim.build_inverter(task.member.method, cfg, encoder_checkpoint=encoder), encoder


METHOD_STAGES: dict[str, Callable[[MemberTask], tuple[Any, str | None]]] = {
    **{m: _train_stage for m in TRAINED_METHODS},
    **{m: _optim_stage for m in OPTIM_METHODS},
}


def _summary_checkpoint(summary: Any, task: MemberTask) -> Path:
    ckpt = None
    if isinstance(summary, Mapping):
        ckpt = summary.get("checkpoint") or summary.get("final_checkpoint") or summary.get("best_checkpoint")
    ckpt = Path(ckpt) if ckpt else None
    if ckpt is None or not ckpt.exists():
        cands = [Path(task.out_dir) / n for n in ("final.pt", "best.pt", "last.pt")]
        ckpt = next((c for c in cands if c.exists()), None)
    if ckpt is None:
        raise FileNotFoundError(f"the trainer returned no checkpoint for {task.member.name} (out_dir {task.out_dir})")
    return ckpt


def _log_params(task: MemberTask, cfg) -> None:
    from e4e import tracking

    client = _client(task.tracking_uri)
    existing = client.get_run(task.run_id).data.params
    params = tracking.flatten_params(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg))
    # nothing is trained: the encoder-training switches do not apply (tagged n/a), so they are not logged
    params = {k: v for k, v in params.items() if k.split(".")[0] not in SWITCH_WORDS}
    tracking.log_params(client, task.run_id, {k: v for k, v in params.items() if k not in existing})


# ================================================================================================
# evaluation of one member
# ================================================================================================
def evaluate_member(task: MemberTask, inverter, client) -> dict[str, float]:
    """Evaluate on the domain's test set and log ``test/*``, ``unavailable.*`` and the artifacts."""
    import torch
    from experiments import evaluate as E

    spec = task.evaluate
    n = spec.get("n_images")
    images = (E.load_images(spec["data"], task.domain, n) if spec.get("data")
              else E.load_test_images(task.domain, n))
    inverter.eval()
    values, per_image, unavailable = E.evaluate(inverter, images, list(spec.get("metrics") or []),
                                                batch_size=spec.get("batch_size", 8), domain=task.domain,
                                                **(spec.get("options") or {}))
    if values and not any(math.isfinite(v) for v in values.values()):
        raise FloatingPointError(f"every evaluation metric is non-finite: {values}")
    # a re-evaluation on another number of images is kept apart: its own prefix, the test/* values stay
    previous = client.get_run(task.run_id).data.tags.get("eval.n_images")
    prefix = TEST_PREFIX if previous in (None, str(len(images))) else f"test_n{len(images)}/"
    E.log_results(client, task.run_id, values, per_image, unavailable, prefix=prefix,
                  extra={"n_images": len(images), "spec": spec},
                  artifact_path="eval" if prefix == TEST_PREFIX else f"eval_n{len(images)}")
    if prefix != TEST_PREFIX:
        client.set_tag(task.run_id, f"eval.{prefix.rstrip('/')}", "true")
        print(f"  {task.member.name}: evaluated on {len(images)} images, the run's test/* hold {previous}: "
              f"logged as {prefix}*", flush=True)
        return values
    from mlflow.entities import Metric

    from experiments.report import summary_metrics

    ts = int(time.time() * 1000)
    client.log_batch(task.run_id, metrics=[Metric(k, v, ts, 0) for k, v in E.new_values(client, task.run_id,
                                                                                        summary_metrics(values))])
    client.set_tag(task.run_id, "eval.n_images", str(len(images)))
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        if _qualitative(task, inverter, images, Path(tmp)):
            client.log_artifacts(task.run_id, tmp, "eval")
    return values


def _qualitative(task: MemberTask, inverter, images, out: Path) -> bool:
    """inputs | inversions | the same edits for every member -> ``qualitative.npz`` and ``.png``."""
    import numpy as np

    from e4e import editing
    from e4e.fileio import to_uint8_hwc

    spec = task.evaluate.get("qualitative") or {}
    k = int(spec.get("n_images", 4))
    if k <= 0:
        return False
    from metrics.registry import resize_like

    x = images[:k]
    codes = inverter.invert(x)
    show = lambda y: to_uint8_hwc(resize_like(y, tuple(x.shape[-2:])))  # noqa: E731 - as the metrics see them
    arrays = {"inputs": to_uint8_hwc(x), "inversions": show(inverter.generate(codes))}
    for edit in spec.get("edits") or []:
        try:
            direction, label = edit_direction(task.domain, edit)
        except (FileNotFoundError, ValueError) as exc:   # no such direction here: say so, go on
            _client(task.tracking_uri).set_tag(task.run_id, f"unavailable.qualitative.{edit.get('direction')}",
                                               str(exc)[:4000])
            continue
        s = float(edit.get("strength", 3.0))
        arrays[f"edit:{label}{s:+g}"] = show(inverter.generate(editing.apply_edit(codes, direction, s)))
    np.savez_compressed(out / "qualitative.npz", **arrays)
    from PIL import Image

    rows = [np.concatenate(list(a), axis=1) for a in arrays.values()]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "qualitative.png")
    return True


def edit_direction(domain: str, edit: Mapping[str, Any]) -> tuple[Any, str]:
    """An edit of a grid file -> (direction for ``e4e.editing.apply_edit``, label). ``direction``
    names a file of the domain (InterFaceGAN / SeFa tensor, or a GANSpace PCA with ``index``,
    ``start``, ``end``)."""
    from e4e import editing

    name = edit["direction"]
    d = editing.load_direction(domain, name)
    if isinstance(d, dict):   # GANSpace PCA: one component on a range of rows
        if "index" not in edit:
            raise GridError(f"edit {dict(edit)}: {name!r} is a GANSpace PCA; give index (and start/end rows)")
        spec = {"pca": d, "index": int(edit["index"]), "start": int(edit.get("start", 0))}
        if "end" in edit:
            spec["end"] = int(edit["end"])
        return spec, edit.get("label", f"{name}{edit['index']}")
    return d, edit.get("label", name)


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
        import submitit

        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.executor.update_parameters(**dict(params))

    def submit(self, fn, task):
        return self.executor.submit(fn, task)

    def close(self):
        pass


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


# ================================================================================================
# a grid call
# ================================================================================================
def _create_child(client, exp_id: str, task: MemberTask, parent_id: str, sha: str) -> str:
    tags = {"mlflow.parentRunId": parent_id, "mlflow.runName": task.member.name, "grid": task.grid,
            "member": task.member.name, "method": task.member.method, "domain": task.domain,
            "profile": task.profile, "git_sha": sha, "config_hash": task.config_hash,
            "grid.order": str(task.member.order), "out_dir": task.out_dir, STAGE_TAG: "queued"}
    if task.member.depends_on:
        tags["depends_on"] = ",".join(task.member.depends_on)
    tags.update(member_tags(task))
    run = client.create_run(exp_id, run_name=task.member.name, tags=tags)
    return run.info.run_id


# what each method is, in words (the member runs' descriptions in the MLflow UI): the method table's
METHOD_WORDS = {name: m.words for name, m in METHODS.items()}
SWITCH_WORDS = {"delta_reg": "delta-regularisation", "adversarial": "latent discriminator",
                "progressive": "progressive training"}


def member_tags(task: MemberTask) -> dict[str, str]:
    """``delta_reg`` / ``adversarial`` / ``progressive`` = on | off | n/a (optimisation baselines train
    nothing) from the member's resolved config, and ``mlflow.note.content``: what the member is."""
    method = task.member.method
    words = METHOD_WORDS.get(method, method)
    if method in OPTIM_METHODS or task.error:
        tags = {k: "n/a" for k in SWITCH_WORDS}
        cfg = None
    else:
        cfg = _task_config(task)
        tags = {k: "on" if getattr(cfg, k).enabled else "off" for k in SWITCH_WORDS}
    if cfg is not None and method == "e4e":
        words += "; " + ", ".join(f"{SWITCH_WORDS[k]} {v}" for k, v in tags.items())
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
             progress: bool = True) -> list[MemberResult]:
    """Run (or show, with ``dry_run``) a grid; returns one result per member, in grid order."""
    tracking_uri = _absolute_sqlite(tracking_uri)
    if dry_run:   # read-only: not even an empty store is created
        tasks = plan(grid, tracking_uri, runs_dir, None, reevaluate)
        print(format_plan(grid, tasks))
        return [MemberResult(t.member.name, {"skip": "SKIPPED"}.get(t.action, "PLANNED"), t.run_id) for t in tasks]
    prepare(grid)
    _ensure_store_dir(tracking_uri)
    client = _client(tracking_uri)
    tasks = plan(grid, tracking_uri, runs_dir, client, reevaluate)

    from e4e import tracking

    exp_id = tracking.get_or_create_experiment(client, grid.domain)
    sha = tracking.git_sha(REPO_ROOT)
    parent = client.create_run(exp_id, run_name=f"{grid.name}-{grid.profile}-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags={"grid": grid.name, "grid.parent": "true", "profile": grid.profile,
                                     "domain": grid.domain, "git_sha": sha, "launcher": launcher,
                                     "grid.file": grid.path})
    parent_id = parent.info.run_id
    with tempfile.TemporaryDirectory() as tmp:   # the resolved grid, as run
        (Path(tmp) / "grid.yaml").write_text(yaml.safe_dump(dataclasses.asdict(grid), sort_keys=False))
        client.log_artifact(parent_id, str(Path(tmp) / "grid.yaml"))
    for t in tasks:
        t.experiment_id, t.parent_run_id = exp_id, parent_id
    print(format_plan(grid, tasks), flush=True)
    jobs = max(1, jobs)
    make = LAUNCHERS.get(launcher)
    if make is None:
        raise GridError(f"unknown launcher {launcher!r}; known: {sorted(LAUNCHERS)}")
    runner = make(jobs=jobs, folder=Path(runs_dir) / grid.domain / grid.name / "submitit", cluster=cluster,
                  params=submitit_params or {})
    results: dict[str, MemberResult] = {}
    try:
        _schedule(tasks, runner, client, exp_id, parent_id, sha, jobs, results, progress)
    except KeyboardInterrupt:
        client.set_terminated(parent_id, "KILLED")
        raise
    finally:
        runner.close()
    ordered = [results[t.member.name] for t in tasks]
    failed = [r for r in ordered if r.status not in ("FINISHED", "SKIPPED")]
    _log_parent_summary(client, parent_id, ordered)
    client.set_tag(parent_id, "mlflow.note.content", parent_note(grid, client, ordered))
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    return ordered


def prepare(grid: GridSpec) -> None:
    """Run each ``prepare`` command whose ``creates`` path is missing (e.g. render the synth data)."""
    import shlex

    for step in grid.prepare:
        if Path(step["creates"]).exists():
            continue
        cmd = shlex.split(step["command"])
        cmd = [sys.executable if cmd[0] in ("python", "python3") else cmd[0], *cmd[1:]]
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
            if t.run_id is None:
                t.run_id = _create_child(client, exp_id, t, parent_id, sha)
            else:
                client.set_tag(t.run_id, "git_sha", sha)
                client.set_tag(t.run_id, "grid.last_parent", parent_id)
            client.update_run(t.run_id, status="RUNNING")
    except LockedError as exc:
        return MemberResult(t.member.name, "BUSY", t.run_id, str(exc))
    return None


def _fail_unstarted(client, exp_id, t: MemberTask, parent_id, sha, msg) -> MemberResult:
    if t.run_id is None:
        t.run_id = _create_child(client, exp_id, t, parent_id, sha)
    _mark_failed(client, t.run_id, msg, msg.split(":")[0], "")
    return MemberResult(t.member.name, "FAILED", t.run_id, msg)


def _checkpoint_of(client, t: MemberTask) -> str | None:
    """Checkpoint of a finished member (its ``checkpoint`` tag, else the newest in its out_dir)."""
    tag = client.get_run(t.run_id).data.tags.get("checkpoint") if t.run_id else None
    if tag and Path(tag).exists():
        return tag
    with contextlib.suppress(FileNotFoundError):
        return str(_summary_checkpoint(None, t))
    return None


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


def _log_parent_summary(client, parent_id: str, results: list[MemberResult]) -> None:
    rows = [{"member": r.member, "status": r.status, "run_id": r.run_id, "seconds": round(r.seconds, 1),
             "error": r.error} for r in results]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "members.json"
        p.write_text(json.dumps(rows, indent=1))
        client.log_artifact(parent_id, str(p))
    counts = {s: sum(r.status == s for r in results) for s in ("FINISHED", "SKIPPED", "FAILED", "KILLED")}
    for s, n in counts.items():
        client.set_tag(parent_id, f"members.{s.lower()}", str(n))


LAUNCHERS: dict[str, Callable[..., Any]] = {
    "local": lambda jobs, **_: InlineLauncher() if jobs <= 1 else ProcessLauncher(jobs),
    "submitit": lambda jobs, folder, cluster, params, **_: SubmititLauncher(folder, cluster, params),
}


# ================================================================================================
# tables
# ================================================================================================
ACTION_WORDS = {"run": "train+evaluate", "resume": "resume (same run)", "retry": "retry (same run)",
                "skip": "skip (finished)", "evaluate": "re-evaluate", "invalid": "FAIL (bad config)",
                "busy": "skip (another live process trains it)"}


def _markdown(header: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    width = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, width)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in width) + "|", *map(line, cells)])


def format_plan(grid: GridSpec, tasks: list[MemberTask]) -> str:
    rows = [[t.member.name, t.member.method, t.config_hash[:10], ACTION_WORDS.get(t.action, t.action),
             (t.run_id or "")[:12], t.previous_status or "", ",".join(t.member.depends_on)] for t in tasks]
    head = (f"grid {grid.name} · domain {grid.domain} · profile {grid.profile} · "
            f"{sum(t.action != 'skip' for t in tasks)}/{len(tasks)} to run")
    return head + "\n" + _markdown(["member", "method", "config_hash", "action", "run", "last status", "needs"], rows)


def parent_note(grid: GridSpec, client, results: list[MemberResult]) -> str:
    """The grid's parent-run description (markdown): what ran and the members x headline-metrics table."""
    n_ok = sum(r.status in ("FINISHED", "SKIPPED") for r in results)
    head = (f"**{grid.name}** on `{grid.domain}`, profile `{grid.profile}`: {n_ok}/{len(results)} members finished. "
            "↓ lower is better, ↑ higher is better; the member runs below carry the same numbers as "
            "`summary/*` metrics and tags `method`, `delta_reg`, `adversarial`, `progressive` "
            "(search e.g. `tags.delta_reg = 'off'`).")
    return head + "\n\n" + results_table(client, results)


def results_table(client, results: list[MemberResult]) -> str:
    """member x key metrics (means over directions/attributes where a metric has several)."""
    from experiments.report import SUMMARY_COLUMNS, summarize

    rows, used = [], set()
    data = []
    for r in results:
        metrics = {}
        if r.run_id:
            run = client.get_run(r.run_id)
            metrics = {k[len(TEST_PREFIX):]: v for k, v in run.data.metrics.items() if k.startswith(TEST_PREFIX)}
        vals = summarize(metrics)
        used |= {c for c, v in vals.items() if v is not None}
        data.append((r, vals))
    cols = [c for c in SUMMARY_COLUMNS if c in used]
    for r, vals in data:
        status = r.status + (f" ({r.error[:60]})" if r.error else "")
        rows.append([r.member, status] + [("–" if vals[c] is None else f"{vals[c]:.4g}") for c in cols])
    return _markdown(["member", "status", *cols], rows)


def grid_status(grid: GridSpec, tracking_uri: str = DEFAULT_TRACKING_URI,
                runs_dir: str | Path = DEFAULT_RUNS_DIR) -> str:
    """What each member's latest run says (nothing is started)."""
    tracking_uri = _absolute_sqlite(tracking_uri)
    if not _store_exists(tracking_uri):
        return format_plan(grid, plan(grid, tracking_uri, runs_dir, None)) + f"\n\n(no store at {tracking_uri} yet)"
    client = _client(tracking_uri)
    tasks = plan(grid, tracking_uri, runs_dir, client)
    results = []
    for t in tasks:
        status = "NOT STARTED" if t.run_id is None else t.previous_status or "?"
        err = None
        if t.run_id is not None:
            tags = client.get_run(t.run_id).data.tags
            stage = tags.get(STAGE_TAG)
            status += "" if stage in (None, "done") else f" [{stage}]"
            err = tags.get("error")
            if t.previous_status == "RUNNING":   # a live process, or an orphan left by a kill
                from e4e.fileio import lock_info

                lock = lock_info(t.out_dir)
                status += (f" (alive: pid {lock['pid']} on {lock['host']})" if lock and lock.get("alive")
                           else " (orphan: no live process; the next run resumes it)")
        elif t.error:
            status, err = "INVALID", t.error
        results.append(MemberResult(t.member.name, status, t.run_id, err))
    return format_plan(grid, tasks) + "\n\n" + results_table(client, results)


# ================================================================================================
# CLI
# ================================================================================================
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", help="grid file (a base grid plus --domain, or a domain variant)")
    p.add_argument("--domain", default=None, help="domain: the MLflow experiment and the grid variant")
    p.add_argument("--profile", default=None, help="profile in the grid file (demo: CPU minutes; paper: GPU schedules)")
    add_tracking_flag(p)
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where member out_dirs (checkpoints) live")
    p.add_argument("--members", default=None, help="comma-separated subset of members (dependencies included)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every member (repeatable), e.g. --set max_steps=50")
    p.add_argument("--eval", dest="eval_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluation override (repeatable), e.g. --eval n_images=200 --eval metrics=[l2,msssim]; "
                        "with --reevaluate for members already finished")


def _cmd_run(args) -> int:
    grid = _load_from_args(args)
    params = parse_dotlist(args.submitit or [])
    jobs = args.jobs or (min(grid.jobs, os.cpu_count() or 1) if args.launcher == "local" else grid.jobs)
    results = run_grid(grid, args.tracking_uri, args.runs_dir, jobs=jobs, launcher=args.launcher,
                       cluster=args.cluster, submitit_params=params, dry_run=args.dry_run,
                       reevaluate=args.reevaluate, progress=not args.no_progress)
    if args.dry_run:
        return 0
    print()
    print(results_table(_client(_absolute_sqlite(args.tracking_uri)), results))
    failed = [r.member for r in results if r.status not in ("FINISHED", "SKIPPED")]
    if failed:
        print(f"\n{len(failed)} member(s) did not finish: {', '.join(failed)} "
              f"(errors: MLflow tag 'error'; re-run the same command to retry only those)")
    return 1 if failed else 0


def _cmd_status(args) -> int:
    print(grid_status(_load_from_args(args), args.tracking_uri, args.runs_dir))
    return 0


def _load_from_args(args) -> GridSpec:
    only = [m.strip() for m in args.members.split(",") if m.strip()] if args.members else None
    return load_grid(args.grid, args.domain, args.profile, parse_dotlist(args.overrides), only,
                     parse_dotlist(args.eval_overrides))


COMMANDS = {"run": _cmd_run, "status": _cmd_status}


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    ap = argparse.ArgumentParser(prog="python -m experiments.grid", description=__doc__.split("\n\n")[0],
                                 formatter_class=fmt)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train + evaluate every member not yet finished", formatter_class=fmt)
    _add_common(run)
    run.add_argument("--jobs", type=int, default=None,
                     help="members in flight at once (local: processes); default: the profile's `jobs` "
                          "(capped at the CPU count for local runs), else 1")
    run.add_argument("--launcher", choices=sorted(LAUNCHERS), default="local", help="where members run")
    run.add_argument("--cluster", default=None,
                     help="submitit cluster: None = auto (slurm when available), 'local', 'debug'")
    run.add_argument("--submitit", action="append", metavar="KEY=VALUE",
                     help="submitit executor parameter (repeatable), e.g. timeout_min=600 slurm_partition=gpu")
    run.add_argument("--dry-run", action="store_true", help="show what would run; start nothing")
    run.add_argument("--reevaluate", action="store_true", help="evaluate finished members again")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    st = sub.add_parser("status", help="show each member's latest run and metrics", formatter_class=fmt)
    _add_common(st)
    return ap


@guarded(GridError)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
