"""Write the report notebooks (``notebooks/*.ipynb``) from the cell sources below.

    python -m experiments.make_notebooks [--out notebooks]

The notebooks are kept as plain JSON in git (no outputs); this script is their source of truth, so a
change to a notebook is a change here followed by a re-run. Each notebook only READS MLflow (through
the read-only helpers in ``experiments.report``) and only WRITES ``$E4E_REPORTS_DIR/figures`` and
``$E4E_REPORTS_DIR/tables``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from e4e.cli import HelpFormatter, Parser, guarded

SETUP = """\
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from experiments import report as R

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto in a kernel without ipywidgets

URI, EXPERIMENT, OUT = R.tracking_uri(), R.experiment_name(), R.reports_dir()
print(f"tracking URI: {R.display(URI)}\\nexperiment:   {EXPERIMENT}\\nreports dir:  {R.display(OUT)}")
sns.set_theme(style="whitegrid", context="notebook")
runs = R.member_runs(EXPERIMENT)
assert not runs.empty, f"no finished grid members in experiment {EXPERIMENT!r} of {URI}"
table = R.metric_table(runs)
print(f"{len(runs)} members: {', '.join(runs.index)}")
"""

PARAMS_MD = """\
Parameters come from the environment (set by `python -m experiments.report`): `E4E_TRACKING_URI`
(or `MLFLOW_TRACKING_URI`), `E4E_EXPERIMENT` (the domain), `E4E_REPORTS_DIR`, optional `E4E_GRID`.
This notebook only reads MLflow and only writes under the reports directory."""

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_ablation_table": [
        ("md", "# Ablation table\n\nDistortion, perception, identity, latent editing consistency (LEC) and "
               "ground-truth editability for every member of the grid (one row per member: its latest "
               "finished, evaluated MLflow child run). Arrows: ↓ lower is better, ↑ higher is better.\n\n"
         + PARAMS_MD),
        ("code", SETUP),
        ("code", """\
R.write_table(table, "ablation_full", OUT, f"Experiment `{EXPERIMENT}`: every logged test metric.")
main = R.metric_table(runs, detail=False)   # without per-row / per-level / reference breakdowns
groups = main.attrs["groups"]
arrow = {m: "↓" if R.LOWER_IS_BETTER.match(m) else "↑" for m in groups}
full = main.rename(columns={m: f"{m} {arrow[m]}" for m in groups})
unavailable = {c[len("tags.unavailable."):]: runs[c].dropna().iloc[0]
               for c in runs.columns if c.startswith("tags.unavailable.") and runs[c].notna().any()}
caption = (f"Experiment `{EXPERIMENT}`: evaluation on the test set "
           f"({', '.join(sorted(set(v for v in groups.values() if v)))}).")
if unavailable:
    caption += "\\n\\nNot computed on this machine (missing weights or inputs): " + "; ".join(
        f"`{k}` ({str(v).split('. ')[0]})" for k, v in sorted(unavailable.items()))
R.write_table(full, "ablation", OUT, caption)
full
"""),
        ("md", "## Summary: one number per axis\n\nThe mean over directions / attributes where a metric has "
               "several (LEC over edit directions, edit gain and leakage over attributes)."),
        ("code", """\
summary = R.summary_table(table)
R.write_table(summary, "ablation_summary", OUT, f"Experiment `{EXPERIMENT}`: one number per axis.")
summary
"""),
    ],
    "02_tradeoffs": [
        ("md", "# Trade-offs\n\nThe paper's two trade-offs, one point per member: distortion vs editability "
               "(LEC, lower = more consistent edits; ground-truth edit gain, higher = edits achieve more "
               "of the intended change) and distortion vs perception (FID/SWD of the inversions).\n\n"
         + PARAMS_MD),
        ("code", SETUP),
        ("code", """\
summary = R.summary_table(table)   # one number per axis (means over directions / attributes)
labels = {"L2 ↓": "L2", "LPIPS ↓": "LPIPS", "FID ↓": "FID", "SWD ↓": "SWD", "LEC ↓": "LEC",
          "edit gain ↑": "edit gain", "edit leak ↓": "edit leak"}
data = summary.rename(columns=labels)[["method"] + [v for k, v in labels.items() if k in summary]]
data = data.reset_index()
distortions = [c for c in ("L2", "LPIPS") if c in data and data[c].notna().any()]
data
"""),
        ("code", """\
def scatter(ax, x, y, near=0.03):
    d = data.dropna(subset=[x, y])
    sns.scatterplot(data=d, x=x, y=y, hue="method", style="method", s=90, ax=ax, legend=False)
    # one label per cluster of nearly coincident points: "first (+n)"
    span = lambda v: (v.max() - v.min()) or 1.0
    nx, ny = (d[x] - d[x].min()) / span(d[x]), (d[y] - d[y].min()) / span(d[y])
    groups = []
    for i in d.index:
        g = next((g for g in groups if abs(nx[g[0]] - nx[i]) < near and abs(ny[g[0]] - ny[i]) < near), None)
        (g.append(i) if g else groups.append([i]))
    for g in groups:
        r = d.loc[g[0]]
        label = r["member"] + (f" (+{len(g) - 1})" if len(g) > 1 else "")
        ax.annotate(label, (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_title(f"{y} vs {x}")

def tradeoff_figure(ys, name):
    pairs = [(x, y) for y in ys for x in distortions if y in data and data[y].notna().any()]
    if not pairs:
        print(f"{name}: nothing to plot (metrics missing)")
        return None
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.5), squeeze=False)
    for ax, (x, y) in zip(axes[0], pairs):
        scatter(ax, x, y)
    ghost = fig.add_axes([0, 0, 0, 0])   # an invisible axis only to get one legend for all panels
    sns.scatterplot(data=data, x=pairs[0][0], y=pairs[0][1], hue="method", style="method", s=90, ax=ghost)
    handles, names = ghost.get_legend_handles_labels()
    ghost.remove()
    fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    print("wrote", R.save_figure(fig, name, OUT))
    return fig

tradeoff_figure(["LEC", "edit gain"], "tradeoff_distortion_editability")
plt.show()
"""),
        ("code", """\
tradeoff_figure(["FID", "SWD"], "tradeoff_distortion_perception")
plt.show()
"""),
    ],
    "03_qualitative": [
        ("md", "# Qualitative comparison\n\nThe same test inputs for every member: input, inversion, and the "
               "same edits (identical directions and strengths) applied to each member's codes. Read from "
               "each child run's `eval/qualitative.npz` artifact.\n\n" + PARAMS_MD),
        ("code", SETUP),
        ("code", """\
panels = {m: R.qualitative(runs.loc[m, "run_id"]) for m in runs.index}
panels = {m: p for m, p in panels.items() if p is not None}
print(f"{len(panels)} members with qualitative artifacts")
assert panels, "no eval/qualitative.npz artifacts"
columns = ["inversions"] + sorted({k for p in panels.values() for k in p if k.startswith("edit:")})
n_images = min(p["inputs"].shape[0] for p in panels.values())
n_images
"""),
        ("code", """\
for i in range(min(n_images, 3)):
    first = next(iter(panels.values()))
    cols = ["inputs"] + columns
    fig, axes = plt.subplots(len(panels), len(cols), figsize=(1.5 * len(cols), 1.5 * len(panels)), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]); ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
    for j, col in enumerate(cols):
        axes[0, j].set_title({"inputs": "input", "inversions": "inversion"}.get(col, col.replace("edit:", "")), fontsize=8)
    for r, (member, p) in enumerate(panels.items()):
        axes[r, 0].set_ylabel(member, rotation=0, ha="right", va="center", fontsize=8)
        for j, col in enumerate(cols):
            if col in p:
                axes[r, j].imshow(p[col][i])
    fig.tight_layout(pad=0.2)
    print("wrote", R.save_figure(fig, f"qualitative_{i}", OUT))
    plt.show()
"""),
    ],
    "04_training_curves": [
        ("md", "# Training curves\n\nEvery curve the trainer logged (losses, validation metrics), one line per "
               "member. Optimisation baselines have no training curve.\n\n" + PARAMS_MD),
        ("code", SETUP),
        ("code", """\
hist = R.stack_members(runs, R.training_history, ["key", "step", "value"])
counts = hist.groupby("key")["member"].nunique().sort_values(ascending=False)
keys = list(counts.index[:9])
print(counts.to_string())
"""),
        ("code", """\
if keys:
    ncol = min(3, len(keys)); nrow = -(-len(keys) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.4 * nrow), squeeze=False)
    members = list(dict.fromkeys(hist["member"]))
    palette = dict(zip(members, sns.color_palette("tab20" if len(members) > 10 else "tab10", n_colors=len(members))))
    for ax, key in zip(axes.ravel(), keys):
        sns.lineplot(data=hist[hist.key == key], x="step", y="value", hue="member", palette=palette,
                     ax=ax, legend=False, lw=1)
        ax.set_title(key, fontsize=9); ax.set_ylabel("")
    for ax in axes.ravel()[len(keys):]:
        ax.remove()
    fig.legend([plt.Line2D([], [], color=palette[m]) for m in members], members, loc="lower center", ncol=min(5, len(members)),
               bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(members) // 5)), frameon=False, fontsize=8)
    fig.tight_layout()
    print("wrote", R.save_figure(fig, "training_curves", OUT))
    plt.show()
else:
    print("no training curves logged")
"""),
    ],
    "05_distributions": [
        ("md", "# Per-image distributions\n\nThe per-image values behind the means of the ablation table "
               "(`eval/per_image.csv` of each member), one box per member.\n\n" + PARAMS_MD),
        ("code", SETUP),
        ("code", """\
per = R.stack_members(runs, R.per_image)
assert len(per), "no eval/per_image.csv artifacts"
value_cols = [c for c in per.columns if c not in ("member", "method", "image", "index")
              and pd.api.types.is_numeric_dtype(per[c]) and per[c].notna().any()]
long = per.melt(id_vars=["member", "method"], value_vars=value_cols, var_name="metric").dropna()
stats = long.groupby(["metric", "member"])["value"].describe()[["count", "mean", "25%", "50%", "75%"]]
R.write_table(stats.reset_index().set_index("metric"), "per_image_summary", OUT,
              f"Experiment `{EXPERIMENT}`: per-image distributions (test set).")
value_cols
"""),
        ("md", "Paired differences on the same test images, each member minus a reference member "
               "(pSp when present): mean, standard error and t. |t| > 2 marks a difference the "
               "per-image spread resolves; training-seed variance is not part of it."),
        ("code", """reference = "psp" if "psp" in set(per.member) else per.member.iloc[0]
paired = R.paired_differences(per, reference, value_cols)
if len(paired):
    wide = paired.assign(cell=[f"{d:+.4g} ± {e:.2g} (t {t:+.1f})" for d, e, t in zip(paired["diff"], paired.se, paired.t)])
    wide = wide.pivot(index="member", columns="metric", values="cell").reindex([m for m in runs.index if m != reference])
    R.write_table(wide.dropna(how="all"), f"paired_vs_{reference}", OUT,
                  f"Experiment `{EXPERIMENT}`: per-image paired differences vs `{reference}` "
                  f"(mean ± standard error, t; n = {int(paired.n.max())} test images).")
paired.head(20)
"""),
        ("code", """\
shown = value_cols[:12]
ncol = min(3, len(shown)); nrow = -(-len(shown) // ncol)
order = list(runs.index)
fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, 0.28 * len(order) * nrow + 1.5 * nrow), squeeze=False)
for ax, col in zip(axes.ravel(), shown):
    d = long[long.metric == col]
    sns.boxplot(data=d, y="member", x="value", hue="method", order=[o for o in order if o in set(d.member)],
                ax=ax, fliersize=1.5, linewidth=0.8, legend=False, dodge=False)
    ax.set_title(col, fontsize=9); ax.set_ylabel(""); ax.set_xlabel("")
    ax.tick_params(axis="y", labelsize=7)
for ax in axes.ravel()[len(shown):]:
    ax.remove()
fig.tight_layout()
print("wrote", R.save_figure(fig, "per_image_distributions", OUT))
plt.show()
"""),
    ],
    "06_realism_gap": [
        ("md", "# Distortion and editability against the realism gap\n\nThe members of the `realism_gap` "
               "grid (`make realism-gap`): the W encoder, e4e and pSp trained and evaluated on synth data sets "
               "whose real images carry more and more detail the generator never saw (gap 0 = the clean "
               "renderer the generator was distilled from). One line per method; the gap is read from the "
               "member name (`<method>-gap<G>`).\n\n" + PARAMS_MD),
        ("code", SETUP),
        ("code", """\
summary = R.summary_table(table).reset_index()
summary["gap"] = summary["member"].str.extract(r"gap([0-9.]+)$", expand=False).astype(float)
summary = summary.dropna(subset=["gap"]).sort_values(["method", "gap"])
assert not summary.empty, "no realism_gap members (run `make realism-gap`, or pass --grid realism_gap)"
R.write_table(summary.set_index("member"), "realism_gap", OUT,
              f"Experiment `{EXPERIMENT}`: W encoder, e4e and pSp per realism gap.")
summary
"""),
        ("code", """\
fig = R.method_lines(summary, "gap", ("L2 ↓", "LEC img ↓", "LEC ↓", "edit leak ↓", "edit FID ↓", "dist. to W (PCA) ↓"))
print("wrote", R.save_figure(fig, "realism_gap", OUT))
plt.show()
"""),
    ],
    "07_convergence": [
        ("md", "# How far from converged: the demo's main members trained longer\n\nThe members of the "
               "`convergence` grid (`make convergence`): the synth demo's W encoder, e4e and pSp (same data and "
               "settings; the 1200-step members are the demo's own configurations) trained 1200, 2400 and 4800 "
               "steps. One line per method; the step count is read from the member name (`<method>-s<steps>`). "
               "`w recovery, pixels` is the MSE of G(ŵ) against G(w) on generator samples divided by that of "
               "G(w_avg): the reconstruction error where a perfect inverter exists, 1 = the mean guess.\n\n" + PARAMS_MD),
        ("code", SETUP),
        ("code", """\
summary = R.summary_table(table).reset_index()
summary["steps"] = summary["member"].str.extract(r"-s([0-9]+)$", expand=False).astype(float)
summary = summary.dropna(subset=["steps"]).astype({"steps": int}).sort_values(["method", "steps"])
assert not summary.empty, "no convergence members (run `make convergence`, or pass --grid convergence)"
R.write_table(summary.set_index("member"), "convergence", OUT,
              f"Experiment `{EXPERIMENT}`: W encoder, e4e and pSp of the synth demo per training length.")
summary
"""),
        ("code", """\
fig = R.method_lines(summary, "steps", ("L2 ↓", "w recovery ↓", "w recovery, pixels ↓", "edit leak ↓", "LEC ↓",
                                        "dist. to W (PCA) ↓"), log_x=True)
print("wrote", R.save_figure(fig, "convergence", OUT))
plt.show()
"""),
    ],
}


def build(out: Path) -> list[Path]:
    from e4e.extras import require_extra

    nbformat = require_extra("nbformat", "notebooks", "writing the notebooks")
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    makers = {"md": new_markdown_cell, "code": new_code_cell}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[makers[kind](src) for kind, src in cells])
        for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives a clean git diff
            cell.id = f"{name[:2]}-{i:02d}"
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        path = out / f"{name}.ipynb"
        nbformat.validate(nb)
        nbformat.write(nb, path)
        written.append(path)
    return written


@guarded()
def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m experiments.make_notebooks", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "notebooks"),
                    help="folder to write the notebooks into")
    args = ap.parse_args(argv)
    for p in build(Path(args.out)):
        print("wrote", p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
