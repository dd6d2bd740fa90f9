"""Tables: the plan, the results and the status of a grid as markdown, and the parent run's note.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from e4e.tracking import DEFAULT_TRACKING_URI

from experiments.grid.spec import DEFAULT_RUNS_DIR, GridSpec, STAGE_TAG, TEST_PREFIX
from experiments.grid.plan import MemberResult, MemberTask, _absolute_sqlite, _client, _store_exists, plan


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
