"""Run an experiment grid: train and evaluate every member, one MLflow child run per member.
"""
from __future__ import annotations

import argparse
import os

from e4e.cli import HelpFormatter, Parser, add_tracking_flag, guarded

from experiments.grid.spec import DEFAULT_RUNS_DIR, GridError, GridSpec, load_grid, parse_dotlist
from experiments.grid.plan import _absolute_sqlite, _client
from experiments.grid.launchers import LAUNCHERS
from experiments.grid.run import OK_STATUSES, run_grid
from experiments.grid.tables import grid_status, results_table

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
                       reevaluate=args.reevaluate, progress=not args.no_progress,
                       allow_prepare_commands=args.allow_prepare_commands)
    if args.dry_run:
        return 0
    print()
    print(results_table(_client(_absolute_sqlite(args.tracking_uri)), results))
    busy = [r.member for r in results if r.status == "BUSY"]
    if busy:
        print(f"\n{len(busy)} member(s) BUSY: another live grid or trainer runs them: {', '.join(busy)} "
              f"(re-run the same command after it finishes to pick up what it left)")
    failed = [r.member for r in results if r.status not in OK_STATUSES]
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
    ap = Parser(prog="python -m experiments.grid", description=__doc__.split("\n\n")[0],
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
    run.add_argument("--allow-prepare-commands", action="store_true",
                     help="let the grid file's `prepare` steps run any command (without a shell); by default "
                          "only the project's own (python -m experiments.synth build ...) run and any other "
                          "refuses the grid before anything runs")
    st = sub.add_parser("status", help="show each member's latest run and metrics", formatter_class=fmt)
    _add_common(st)
    return ap


@guarded(GridError)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)

