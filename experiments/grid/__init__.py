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
    data; split with shlex and run without a shell, and only the project's own
    ``python -m experiments.synth build ...`` unless ``--allow-prepare-commands``), ``evaluate``
    (metrics, n_images, batch_size, data folder, qualitative edits, options), profile ``jobs``
    (default ``--jobs``).

    Checked before anything is written (one ``error:`` line, exit 2, no store, no runs dir): the
    shape of every key, the methods, the metric names (``metrics.registry``), grid, domain and member
    names (they name folders and MLflow filter values: letters, digits, ``_ . = + -``, no ``..``),
    every member's resolved config (trained members: ``max_steps >= 1``) and the prepare commands.

MLflow (docs/design.md §5)
    One experiment per domain. One parent run per grid call (tags ``grid``, ``profile``,
    ``domain``). Each member is a nested child run (``mlflow.parentRunId``) named after the member,
    tagged ``grid``, ``member``, ``method``, ``git_sha``, ``config_hash``, ``grid.order`` and
    ``grid.stage`` (``train`` -> ``evaluate`` -> ``done``). A member whose ``config_hash`` already has a
    FINISHED run with ``grid.stage=done`` is skipped; any other run with that hash (killed, failed,
    evaluation interrupted) is resumed: its run id is handed to the trainer, which continues from
    the checkpoint in the member's ``out_dir`` and logs into the SAME run. A failing member (NaN loss,
    missing weights, bad config) is marked FAILED with the error in the ``error`` tag; the grid goes
    on and a re-run retries only what did not finish. A member another live process holds (a second
    grid call on the same store) is BUSY: left to that process, listed, and the call exits 0. Each
    parent run records its process (``grid.pid``, ``grid.host``); a later grid call marks the RUNNING
    parents of processes that are gone KILLED. The first grid call on a new sqlite store creates its
    tables under the store folder's ``DirLock``, so two calls started together both open it.

    Evaluation (``experiments.evaluate.evaluate``) on the domain's test set logs ``test/<metric>``,
    tags ``unavailable.<metric>`` for metrics whose weights/inputs are missing, and the artifacts
    ``eval/metrics.json``, ``eval/per_image.csv`` and ``eval/qualitative.npz`` (+ ``.png``): inputs,
    inversions and the same edits for every member, which the notebooks read.

Launchers (docs/design.md §6)
    ``local``: members in this process (``--jobs 1``) or in N spawned processes (``--jobs N``).
    ``submitit``: each member is a submitit job (SLURM on a cluster; ``--cluster local`` or
    ``--cluster debug`` run submitit's local executors, as the tests do).

Modules
    ``spec`` (grid files, member names, configs), ``plan`` (what each member needs; the store
    helpers), ``member`` (one member in its worker: train, evaluate, log), ``launchers`` (where
    members run), ``run`` (a grid call: parent run, claiming each member's run, the schedule),
    ``tables`` (plan / results / status as markdown), ``cli`` (``python -m experiments.grid``).
"""
from experiments.grid.cli import build_parser, main
from experiments.grid.launchers import LAUNCHERS, InlineLauncher, ProcessLauncher, SubmititLauncher
from experiments.grid.member import edit_direction, evaluate_member, run_member
from experiments.grid.plan import ACTIONS, MemberResult, MemberTask, member_hash, plan
from experiments.grid.run import member_tags, prepare, run_grid
from experiments.grid.spec import (DEFAULT_RUNS_DIR, STAGE_TAG, TEST_PREFIX, GridError, GridSpec, Member,
                                   config_hash, domain_variant, load_grid, member_name, parse_dotlist,
                                   resolve_config)
from experiments.grid.tables import format_plan, grid_status, parent_note, results_table

__all__ = ["GridSpec", "Member", "MemberTask", "MemberResult", "GridError", "load_grid", "member_name",
           "resolve_config", "config_hash", "parse_dotlist", "domain_variant", "plan", "member_hash", "ACTIONS",
           "run_grid", "prepare", "member_tags", "run_member", "evaluate_member", "edit_direction", "grid_status",
           "results_table", "format_plan", "parent_note", "LAUNCHERS", "InlineLauncher", "ProcessLauncher",
           "SubmititLauncher", "DEFAULT_RUNS_DIR", "STAGE_TAG", "TEST_PREFIX", "build_parser", "main"]
