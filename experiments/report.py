"""Regenerate ``reports/`` from MLflow: the read-only helpers the notebooks use, and the CLI that
executes the notebooks headless.

    python -m experiments.report [--tracking-uri URI] [--experiment synth] [--out reports]

The notebooks in ``notebooks/`` only READ the MLflow store (``mlflow.search_runs`` + artifacts) and
only WRITE ``<out>/figures/*.png`` and ``<out>/tables/*.{csv,md}``. They are parameterised through
environment variables, which this CLI sets for the kernel:

- ``E4E_TRACKING_URI`` (else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``),
- ``E4E_EXPERIMENT`` (the MLflow experiment = the domain, default ``synth``),
- ``E4E_REPORTS_DIR`` (default ``reports``),
- ``E4E_GRID`` (optional: only members of that grid).

What the notebooks read is what ``experiments.grid`` writes into each member's child run: metrics
``test/<name>`` (evaluation on the domain's test set), the training curves the trainer logs, the
artifacts ``eval/per_image.csv`` and ``eval/qualitative.npz``, and the tags ``grid``, ``member``,
``method``, ``grid.stage``.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
from e4e.cli import HelpFormatter, Parser, check_out_dir, guarded, positive_int

__all__ = [
    "DEFAULT_TRACKING_URI", "METRIC_GROUPS", "SUMMARY_COLUMNS", "summarize", "summary_table", "mean_of", "NOTEBOOKS", "TEST_PREFIX", "tracking_uri", "experiment_name",
    "reports_dir", "grid_filter", "member_runs", "metric_columns", "metric_table", "group_of", "to_markdown",
    "write_table", "per_image", "qualitative", "training_history", "training_keys", "save_figure", "method_lines",
    "execute_notebooks", "main",
]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "synth"
DEFAULT_REPORTS_DIR = "reports"
TEST_PREFIX = "test/"          # evaluation metrics logged by experiments.grid
PER_IMAGE_ARTIFACT = "eval/per_image.csv"
QUALITATIVE_ARTIFACT = "eval/qualitative.npz"
STAGE_TAG = "grid.stage"
DONE = "done"

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = (
    "01_ablation_table.ipynb",
    "02_tradeoffs.ipynb",
    "03_qualitative.ipynb",
    "04_training_curves.ipynb",
    "05_distributions.ipynb",
)
# notebooks of other grids, run by name (`make realism-gap`: --grid realism_gap --notebooks 06_...)
GRID_NOTEBOOKS = {"realism_gap": ("06_realism_gap.ipynb",), "convergence": ("07_convergence.ipynb",)}

# metric name (without the test/ prefix) -> the paper's axis it measures. First match wins.
METRIC_GROUPS: dict[str, re.Pattern] = {
    "distortion": re.compile(r"^(l2|mse|lpips.*|msssim.*)$"),
    "perception": re.compile(r"^(fid.*|swd.*)$"),
    "identity": re.compile(r"^id_.*"),
    "lec": re.compile(r"^lec.*"),
    "editability": re.compile(r"^edit_.*"),
    "latent": re.compile(r"^(latent_.*|w_recovery.*)"),
}
# metrics where lower is better (for the arrows in the table); everything else: higher is better
LOWER_IS_BETTER = re.compile(r"^(l2|mse|lpips.*|fid.*|swd.*|lec.*|latent_.*|w_recovery.*|edit_.*_leak.*|edit_.*_drift.*|edit_fid.*)$")


# ------------------------------------------------------------------------------------------------
# parameters (environment)
# ------------------------------------------------------------------------------------------------
def tracking_uri() -> str:
    return os.environ.get("E4E_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def experiment_name() -> str:
    return os.environ.get("E4E_EXPERIMENT") or DEFAULT_EXPERIMENT


def reports_dir() -> Path:
    return Path(os.environ.get("E4E_REPORTS_DIR") or DEFAULT_REPORTS_DIR)


def grid_filter() -> str | None:
    return os.environ.get("E4E_GRID") or None


def _client(uri: str | None = None):
    from e4e.tracking import get_client

    return get_client(uri or tracking_uri(), must_exist=True)  # a reader: a missing store is an error, not created


# ------------------------------------------------------------------------------------------------
# runs and metrics
# ------------------------------------------------------------------------------------------------
def member_runs(experiment: str | None = None, grid: str | None = None, uri: str | None = None,
                only_done: bool = True) -> pd.DataFrame:
    """One row per grid member: its latest FINISHED, evaluated child run in ``experiment``.

    Columns are ``mlflow.search_runs``'s (``run_id``, ``status``, ``metrics.*``, ``params.*``,
    ``tags.*``) plus ``member`` and ``method``; the index is the member name, in grid order when the
    runs carry a ``grid.order`` tag.
    """
    import mlflow

    from e4e.tracking import check_store, filter_literal, using_tracking_uri

    experiment = experiment or experiment_name()
    grid = grid if grid is not None else grid_filter()
    with using_tracking_uri(check_store(uri or tracking_uri(), must_exist=True)):
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            raise LookupError(f"no MLflow experiment {experiment!r} in {uri or tracking_uri()}; "
                              "run `python -m experiments.grid run ...` first")
        filters = ["tags.member != ''"]
        if only_done:
            filters += ["attributes.status = 'FINISHED'", f"tags.`{STAGE_TAG}` = '{DONE}'"]
        if grid:
            filters.append(f"tags.grid = {filter_literal(grid)}")
        df = mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=" and ".join(filters),
                                order_by=["attributes.start_time DESC"], max_results=5000)
    if df.empty:
        return df
    df = df.drop_duplicates(subset="tags.member", keep="first").copy()
    sizes = df.get("tags.eval.n_images")
    if sizes is not None and sizes.dropna().nunique() > 1:
        by = {m: n for m, n in zip(df["tags.member"], sizes) if n == n}
        raise ValueError(f"members evaluated on different numbers of test images ({by}): their test/* metrics "
                         "are not comparable; re-evaluate them on one size (grid run --reevaluate)")
    df["member"] = df["tags.member"]
    df["method"] = df.get("tags.method", pd.Series(index=df.index, dtype=object))
    order_col = "tags.grid.order"
    if order_col in df:
        df["_order"] = pd.to_numeric(df[order_col], errors="coerce")
        df = df.sort_values(["_order", "member"]).drop(columns="_order")
    return df.set_index("member", drop=False)


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Evaluation metric names (without prefix) present in ``runs`` with at least one value."""
    prefix = "metrics." + TEST_PREFIX
    return [c[len(prefix):] for c in runs.columns if c.startswith(prefix) and runs[c].notna().any()]


def group_of(metric: str) -> str | None:
    return next((g for g, pat in METRIC_GROUPS.items() if pat.match(metric)), None)


# per-row / per-level / raw breakdowns: kept in the full table, left out of the main one
DETAIL = re.compile(r".*(_row\d+|_raw(_ref)?|_ref|_nn_raw|swd(_shared)?_\d+)$")


def metric_table(runs: pd.DataFrame, groups: Iterable[str] | None = None, detail: bool = True) -> pd.DataFrame:
    """member x metric table, columns ordered by paper axis (distortion, perception, identity, LEC,
    editability, latent) and named ``<metric>``; ``table.attrs['groups']`` maps metric -> axis.
    ``detail=False`` leaves out breakdowns (``DETAIL``: per W+ row, per SWD level, raw/reference)."""
    groups = list(groups or METRIC_GROUPS)
    names = [n for n in metric_columns(runs) if detail or not DETAIL.fullmatch(n)]
    ordered = [m for g in groups for m in sorted(n for n in names if group_of(n) == g)]
    table = pd.DataFrame({m: runs["metrics." + TEST_PREFIX + m] for m in ordered}, index=runs.index)
    table.insert(0, "method", runs["method"])
    table.index.name = "member"
    table.attrs["groups"] = {m: group_of(m) for m in ordered}
    return table


# one number per axis: column -> metric-name patterns; the first pattern that matches any metric
# wins and its matches are averaged (e.g. LEC over edit directions, edit gain over attributes)
SUMMARY_COLUMNS: dict[str, tuple[str, ...]] = {
    "L2 ↓": (r"l2",),
    "LPIPS ↓": (r"lpips_alex", r"lpips.*"),
    "MS-SSIM ↑": (r"msssim.*",),
    "FID ↓": (r"fid_domain", r"fid.*"),
    "SWD ↓": (r"swd_avg", r"swd"),
    "ID ↑": (r"id_domain", r"id_.*"),
    "LEC ↓": (r"lec_(?!official|img|feat).*", r"lec_official.*"),   # latent-space LEC
    "LEC img ↓": (r"lec_img_.*",),          # the same cycle compared in pixels
    "LEC feat ↓": (r"lec_feat_.*",),        # ... and in identity / attribute-net features
    "edit gain ↑": (r"edit_(?!fid).*_gain",),
    "edit leak ↓": (r"edit_(?!fid).*_leak",),
    "edit FID ↓": (r"edit_fid_.*",),        # realism of edited inversions vs generator samples
    "dist. to W ↓": (r"latent_dist_w",),   # not its _ref / _nn / _row<i> companions
    "dist. to W (PCA) ↓": (r"latent_dist_w_pca\d+",),
    "w recovery ↓": (r"w_recovery",),      # inverting G(w): 0 = the true w, 1 = W's mean
    "w recovery, pixels ↓": (r"w_recovery_l2_ratio",),  # G(w) reconstructed: 0 = exactly, 1 = as the mean
}


# short, stable MLflow metric names of the summary columns (``summary/<key>`` on every member run:
# they sort together in the runs table and survive column renames)
SUMMARY_KEYS: dict[str, str] = {
    "L2 ↓": "l2", "LPIPS ↓": "lpips", "MS-SSIM ↑": "msssim", "FID ↓": "fid", "SWD ↓": "swd", "ID ↑": "id",
    "LEC ↓": "lec", "LEC img ↓": "lec_img", "LEC feat ↓": "lec_feat", "edit gain ↑": "edit_gain",
    "edit leak ↓": "edit_leak", "edit FID ↓": "edit_fid", "dist. to W ↓": "dist_w",
    "dist. to W (PCA) ↓": "dist_w_pca", "w recovery ↓": "w_recovery",
    "w recovery, pixels ↓": "w_recovery_px",
}


def summary_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``{metric: value}`` -> ``{'summary/<key>': value}`` for the summary columns that have a value."""
    return {f"summary/{SUMMARY_KEYS[c]}": v for c, v in summarize(metrics).items() if v is not None}


def summarize(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """``{metric: value}`` -> ``{summary column: value or None}`` (see ``SUMMARY_COLUMNS``)."""
    out: dict[str, float | None] = {}
    for col, patterns in SUMMARY_COLUMNS.items():
        out[col] = None
        for p in patterns:
            vals = [float(v) for k, v in metrics.items() if re.fullmatch(p, k) and v is not None and v == v]
            if vals:
                out[col] = sum(vals) / len(vals)
                break
    return out


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """member x one column per axis (columns without any value dropped)."""
    rows = {m: summarize({c: table.loc[m, c] for c in table.columns if c != "method"}) for m in table.index}
    out = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    out.insert(0, "method", table["method"])
    out.index.name = "member"
    return out.loc[:, out.notna().any()]


def mean_of(table: pd.DataFrame, pattern: str) -> pd.Series:
    """Row-wise mean of the metric columns matching ``pattern`` (NaN where none)."""
    cols = [c for c in table.columns if c != "method" and re.match(pattern, c)]
    if not cols:
        return pd.Series(np.nan, index=table.index)
    return table[cols].astype(float).mean(axis=1)


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------
def stack_members(runs: pd.DataFrame, fetch, columns: Iterable[str] = ()) -> pd.DataFrame:
    """``fetch(run_id)`` (a frame, or None) for every member of ``runs``, tagged with ``member`` and
    ``method`` and stacked; an empty frame with ``columns`` + member/method when no member has any."""
    frames = []
    for m in runs.index:
        df = fetch(runs.loc[m, "run_id"])
        if df is not None and not df.empty:
            frames.append(df.assign(member=m, method=runs.loc[m, "method"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*columns, "member", "method"])


def paired_differences(per: pd.DataFrame, reference: str, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-image paired comparison of every member with ``reference`` on the same test images.

    ``per``: long per-image frame with columns ``member``, ``image`` and metric columns (the
    ``eval/per_image.csv`` artifacts stacked). For each member != reference and each metric: the
    mean of (member - reference) over the images both have, its standard error
    (sd / sqrt(n)), t = mean / se and n. It resolves differences between members that the spread
    of the per-image values would hide; it does not measure training-seed variance."""
    ref = per[per.member == reference].set_index("image")
    cols = [c for c in (metrics or per.columns) if c not in ("member", "method", "image", "index")
            and c in ref and pd.api.types.is_numeric_dtype(per[c])]
    rows = []
    for m in dict.fromkeys(per.member):
        if m == reference:
            continue
        cur = per[per.member == m].set_index("image")
        for c in cols:
            d = (cur[c] - ref[c]).dropna()
            if len(d) < 2:
                continue
            se = float(d.std(ddof=1)) / math.sqrt(len(d))
            mean = float(d.mean())
            rows.append({"member": m, "metric": c, "diff": mean, "se": se,
                         "t": mean / se if se > 0 else float("nan"), "n": len(d)})
    return pd.DataFrame(rows, columns=["member", "metric", "diff", "se", "t", "n"])


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        a = abs(v)
        return f"{v:.3g}" if (a >= 1e3 or (a < 1e-2 and a > 0)) else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def to_markdown(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, row in df.iterrows():
        cells = ([str(idx)] if index else []) + [_fmt(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, name: str, out: Path | None = None, caption: str = "") -> tuple[Path, Path]:
    """Write ``<out>/tables/<name>.csv`` and ``.md``; returns both paths."""
    d = Path(out or reports_dir()) / "tables"
    d.mkdir(parents=True, exist_ok=True)
    csv, md = d / f"{name}.csv", d / f"{name}.md"
    df.to_csv(csv)
    md.write_text((caption + "\n\n" if caption else "") + to_markdown(df))
    return display(csv), display(md)


def display(path) -> Path | str:
    """``path`` relative to the working directory when it lies below it (sqlite URIs too): what the
    executed notebooks print, without the machine's absolute paths."""
    text = str(path)
    if text.startswith("sqlite:///"):
        return "sqlite:///" + str(display(Path(text[len("sqlite:///"):])))
    p = Path(text)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()) if p.is_absolute() else p
    except ValueError:
        return p


def method_lines(summary: pd.DataFrame, x: str, columns: Iterable[str], log_x: bool = False):
    """One panel per summary column that has a value, one line per method against ``x`` (the
    realism-gap and convergence figures); ``log_x`` puts ``x`` on a log axis ticked at its values."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [c for c in columns if c in summary and summary[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    ticks = sorted(summary[x].unique())
    for ax, col in zip(axes[0], panels):
        sns.lineplot(data=summary, x=x, y=col, hue="method", style="method", markers=True, dashes=False,
                     ax=ax, legend=ax is axes[0][0])
        if log_x:
            ax.set_xscale("log"); ax.minorticks_off(); ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_title(col, fontsize=10); ax.set_ylabel("")
    fig.tight_layout()
    return fig


def save_figure(fig, name: str, out: Path | None = None, dpi: int = 150) -> Path:
    d = Path(out or reports_dir()) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return display(path)


# ------------------------------------------------------------------------------------------------
# artifacts and histories
# ------------------------------------------------------------------------------------------------
def _download(run_id: str, path: str, uri: str | None = None) -> Path | None:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                        tracking_uri=uri or tracking_uri()))
    except Exception:  # noqa: BLE001 - a member without that artifact is simply left out
        return None


def per_image(run_id: str, uri: str | None = None) -> pd.DataFrame | None:
    """The per-image metric values of one member (``eval/per_image.csv``), or None."""
    path = _download(run_id, PER_IMAGE_ARTIFACT, uri)
    return pd.read_csv(path) if path else None


def qualitative(run_id: str, uri: str | None = None) -> dict[str, np.ndarray] | None:
    """``eval/qualitative.npz``: ``inputs``, ``inversions`` and ``edit:<name>`` uint8 [k,H,W,3]."""
    path = _download(run_id, QUALITATIVE_ARTIFACT, uri)
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def training_keys(run_id: str, uri: str | None = None, min_points: int = 2) -> list[str]:
    """Metric keys of a run that are curves (logged at >= ``min_points`` steps), evaluation excluded."""
    client = _client(uri)
    run = client.get_run(run_id)
    keys = [k for k in run.data.metrics if not k.startswith(TEST_PREFIX)]
    return sorted(k for k in keys if len(client.get_metric_history(run_id, k)) >= min_points)


def training_history(run_id: str, keys: Iterable[str] | None = None, uri: str | None = None) -> pd.DataFrame:
    """Long-format history: columns ``key``, ``step``, ``value``."""
    client = _client(uri)
    keys = list(keys) if keys is not None else training_keys(run_id, uri)
    rows = [(k, m.step, m.value) for k in keys for m in client.get_metric_history(run_id, k)]
    return pd.DataFrame(rows, columns=["key", "step", "value"]).sort_values(["key", "step"])


# ------------------------------------------------------------------------------------------------
# headless execution
# ------------------------------------------------------------------------------------------------
def _kernel_name() -> str:
    """The ipykernel 'python3' kernelspec; jupyter_client runs it with the current interpreter
    (``python`` in the spec's argv is replaced by ``sys.executable``). Falls back to installing the
    spec into this environment when it is missing (a venv without the data files)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix, kernel_name="python3")
    return "python3"


@contextmanager
def _quiet_timer(label: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    print(f"  {label}: {time.perf_counter() - t0:.1f}s", flush=True)


def execute_notebooks(notebooks: Iterable[str | Path] | None = None, *, uri: str | None = None,
                      experiment: str | None = None, out: str | Path | None = None, grid: str | None = None,
                      timeout: int = 600, save_executed: bool = True, cwd: str | Path | None = None) -> dict[str, str]:
    """Execute notebooks headless with nbclient against one MLflow store.

    Returns ``{notebook name: 'ok' | error message}``; executed copies go to ``<out>/notebooks/``.
    """
    from e4e.extras import require_extra

    for module in ("nbformat", "nbclient", "jupyter_client", "ipykernel"):
        require_extra(module, "notebooks", "executing the report notebooks")
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    out = Path(out or reports_dir()).resolve()
    env = dict(os.environ)
    env.update({"E4E_TRACKING_URI": _absolute_uri(uri or tracking_uri()),
                "E4E_EXPERIMENT": experiment or experiment_name(),
                "E4E_REPORTS_DIR": str(out), "MPLBACKEND": "Agg", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    if grid:
        env["E4E_GRID"] = grid
    paths = [Path(p) for p in (notebooks or [NOTEBOOKS_DIR / n for n in NOTEBOOKS])]
    kernel = _kernel_name()
    results: dict[str, str] = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, kernel_name=kernel, timeout=timeout,
                                resources={"metadata": {"path": str(Path(cwd or Path.cwd()).resolve())}})
        with _quiet_timer(path.name):
            try:
                client.execute(env=env)
                results[path.name] = "ok"
            except CellExecutionError as exc:
                results[path.name] = _short_error(str(exc))
        if save_executed:
            (out / "notebooks").mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out / "notebooks" / path.name)
    return results


def _short_error(msg: str, n: int = 15) -> str:
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", msg).splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def _absolute_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db so the kernel's cwd does not matter."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _notebook_paths(names: list[str] | None) -> list[Path] | None:
    """``--notebooks``: each a path, or a name in ``notebooks/``; a missing one is a ``ConfigError``."""
    from e4e.config import ConfigError

    paths = [Path(n) if Path(n).exists() else NOTEBOOKS_DIR / n for n in names or []]
    missing = [n for n, p in zip(names or [], paths) if not p.is_file()]
    if missing:
        raise ConfigError(f"notebook(s) not found: {', '.join(missing)} (a path, or a name in {NOTEBOOKS_DIR})")
    return paths or None


def _check_source(uri: str, experiment: str) -> None:
    """The store exists and holds ``experiment`` (checked before any notebook runs; nothing is created)."""
    if _client(uri).get_experiment_by_name(experiment) is None:
        raise LookupError(f"no MLflow experiment {experiment!r} in {uri}; run `python -m experiments.grid run ...` "
                          "first, or pass --experiment / --tracking-uri")


@guarded(LookupError)
def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--tracking-uri", default=tracking_uri(), help="MLflow tracking URI to read")
    ap.add_argument("--experiment", default=experiment_name(), help="MLflow experiment (= domain)")
    ap.add_argument("--grid", default=grid_filter(), help="only members of this grid (default: all)")
    ap.add_argument("--out", default=str(reports_dir()), help="reports directory (figures/, tables/)")
    ap.add_argument("--notebooks", nargs="*", default=None,
                    help=f"notebooks to run (default: {', '.join(NOTEBOOKS)})")
    ap.add_argument("--timeout", type=positive_int, default=600, help="per-cell timeout in seconds")
    ap.add_argument("--no-save-executed", action="store_true", help="do not write executed notebook copies")
    ap.add_argument("--no-log-parent", action="store_true",
                    help="do not attach the figures and tables to the grid's parent run (with --grid)")
    args = ap.parse_args(argv)

    nbs = _notebook_paths(args.notebooks)
    check_out_dir(args.out)
    _check_source(args.tracking_uri, args.experiment)
    print(f"reports from {args.tracking_uri} experiment {args.experiment!r} -> {args.out}", flush=True)
    results = execute_notebooks(nbs, uri=args.tracking_uri, experiment=args.experiment, out=args.out,
                                grid=args.grid, timeout=args.timeout, save_executed=not args.no_save_executed)
    failed = {k: v for k, v in results.items() if v != "ok"}
    for name, err in failed.items():
        print(f"FAILED {name}:\n{err}", file=sys.stderr)
    written = sorted(str(p.relative_to(Path(args.out))) for p in Path(args.out).glob("*/*.*")
                     if p.parent.name in ("figures", "tables"))
    print(f"{len(results) - len(failed)}/{len(results)} notebooks ok; wrote {len(written)} files under {args.out}")
    if args.grid and not args.no_log_parent:
        parent = log_to_parent(args.tracking_uri, args.experiment, args.grid, Path(args.out))
        if parent:
            print(f"figures and tables attached to the grid's parent run {parent}")
    return 1 if failed else 0


def log_to_parent(uri: str, experiment: str, grid: str, out: Path) -> str | None:
    """Attach ``out/figures`` and ``out/tables`` to the latest parent run of ``grid`` (the MLflow UI
    then shows the tradeoff plot and the qualitative grid on the grid's own run)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    from e4e.tracking import filter_literal

    runs = client.search_runs([exp.experiment_id], f"tags.grid = {filter_literal(grid)} and tags.`grid.parent` = 'true'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run_id = runs[0].info.run_id
    for sub in ("figures", "tables"):
        if (out / sub).is_dir() and any((out / sub).iterdir()):
            client.log_artifacts(run_id, str(out / sub), sub)
    return run_id


if __name__ == "__main__":
    sys.exit(main())
