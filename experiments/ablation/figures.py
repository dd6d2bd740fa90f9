"""Figures of the ablation study: effects with confidence intervals, one panel per metric."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# metric -> (axis label, lower is better?)  The arrow in each label says which way is better.
LABELS = {
    "l2": ("L2 ↓", True), "msssim": ("MS-SSIM ↑", False), "id_domain": ("identity ↑", False),
    "lec_smile_12": ("LEC (latent) ↓", True), "lec_ratio_smile_12": ("LEC ÷ constant code ↓", True),
    "lec_excess_smile_12": ("LEC(s) − LEC(0) ↓", True), "lec_smile_0": ("LEC at s = 0 ↓", True),
    "lec_jac_smile_12": ("LEC, Jacobian metric ↓", True), "lec_jac_ratio_smile_12": ("Jacobian LEC ÷ constant ↓", True),
    "lec_img_smile_12": ("LEC, image MSE ↓", True), "lec_feat_smile_12": ("LEC, features ↓", True),
    "latent_dist_w_pca95": ("distance to W (PCA) ↓", True),
    "latent_dist_w_pca95_resid": ("residual outside W ↓", True), "latent_offset": ("offset ÷ W spread ↓", True),
    "w_recovery": ("w recovery ↓", True), "w_recovery_l2": ("w recovery, pixels ↓", True),
    "edit_smile_gain_raw": ("smile edit gain ↑", False), "edit_age_gain_raw": ("age edit gain ↑", False),
    "edit_yaw_gain_raw": ("yaw edit gain ↑", False), "edit_leak": ("edit leak ↓", True),
    "edit_fid_smile_12": ("edit FID ↓", True), "fid_domain": ("FID ↓", True),
}


def label(metric: str) -> str:
    return LABELS.get(metric, (metric, True))[0]


def effects_figure(table: pd.DataFrame, metrics: list[str] | None = None, ncols: int = 4):
    """Horizontal bars of every effect with its 95 % interval (t quantile on n_seeds - 1 degrees of
    freedom; the normal one when the SE is per image); one panel per metric, the effect in the
    metric's own units, a dashed line at 0."""
    import matplotlib.pyplot as plt
    from scipy import stats

    metrics = [m for m in (metrics or dict.fromkeys(table.metric)) if (table.metric == m).any()]
    ncols = min(ncols, len(metrics))
    effects = list(dict.fromkeys(table.effect))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 0.32 * len(effects) * nrows + 1.2 * nrows),
                             squeeze=False, sharey=True)
    y = np.arange(len(effects))[::-1]
    for ax, metric in zip(axes.flat, metrics):
        rows = table[table.metric == metric].set_index("effect").reindex(effects)
        df = np.where(rows.se_basis == "seeds", rows.n_seeds - 1, np.inf)
        q = np.array([stats.t.ppf(0.975, d) if np.isfinite(d) and d > 0 else 1.96 for d in df])
        half = (q * rows.se).to_numpy()
        sig = np.isfinite(half) & (np.abs(rows.estimate.to_numpy()) > np.nan_to_num(half, nan=np.inf))
        half = np.nan_to_num(half, nan=0.0)
        colors = ["#1f77b4" if s else "#9e9e9e" for s in sig]
        ax.barh(y, rows.estimate, xerr=half, color=colors, height=0.6, error_kw={"elinewidth": 1, "capsize": 2})
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_xlabel(f"effect on {label(metric)}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_yticks(y, effects, fontsize=8)
    steps, n_seeds = table.steps.dropna().unique(), int(table.n_seeds.max())
    fig.suptitle(f"Effects of e4e's components (synth, {', '.join(str(int(s)) for s in steps)} steps, "
                 f"{n_seeds} seed{'s' if n_seeds != 1 else ''}; bars: 95 % CI, blue: excludes 0, grey: does not or no CI)", fontsize=10)
    fig.tight_layout()
    return fig


def save(fig, out: Path | str, name: str) -> list[Path]:
    """``<out>/figures/<name>.pdf`` (vector) and ``.png``."""
    d = Path(out) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / f"{name}.pdf", d / f"{name}.png"]
    fig.savefig(paths[0], bbox_inches="tight")
    fig.savefig(paths[1], dpi=150, bbox_inches="tight")
    return paths
