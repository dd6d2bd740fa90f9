"""Paired differences between two members over several training seeds (one MLflow store, or one
experiment, per seed).

    python -m experiments.seeds --member e4e --reference psp --grid paper_ablation \\
        --store sqlite:///mlruns/mlflow.db --store sqlite:///mlruns/seed1.db --store sqlite:///mlruns/seed2.db \\
        --out reports/tables/seeds_e4e_vs_psp

Per seed: the per-image paired difference (member - reference) on the same test images, its mean,
standard error over images and t (``experiments.report.paired_differences``). Across seeds: the mean
of the per-seed means, its standard error over seeds (sd / sqrt(n_seeds): the training-seed
variance the per-image errors do not contain), t, and how many seeds agree in sign with that mean.
Writes ``<out>.csv`` and ``<out>.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from e4e.cli import Parser, check_out_dir, comma_list, guarded

DEFAULT_METRICS = ("l2", "msssim", "id_domain", "latent_dist_w_pca95", "latent_dist_w_pca95_resid",
                   "edit_smile_leak", "edit_age_leak", "edit_yaw_leak", "lec_smile_12", "lec_img_smile_12",
                   "lec_feat_smile_12")


def seed_differences(stores: list[str], member: str, reference: str, experiment: str = "synth",
                     grid: str | None = None, metrics=DEFAULT_METRICS) -> pd.DataFrame:
    """Long frame: seed (the member's ``seed`` parameter, else the store's index), metric, diff, se,
    t, n for every store."""
    from experiments import report as R

    frames = []
    for i, uri in enumerate(stores):
        runs = R.member_runs(experiment, grid, uri=uri)
        missing = [m for m in (member, reference) if m not in runs.index]
        if missing:
            raise LookupError(f"{uri}: no finished member {', '.join(missing)} (grid {grid or 'any'})")
        runs = runs.loc[[member, reference]]
        per = R.stack_members(runs, lambda rid: R.per_image(rid, uri))
        diff = R.paired_differences(per, reference, metrics)
        seed = runs.loc[member].get("params.seed", i)
        frames.append(diff[diff.member == member].assign(seed=int(seed), store=uri))
    seeds = [int(f.seed.iloc[0]) for f in frames if len(f)]
    if len(set(seeds)) != len(seeds):
        raise LookupError(f"the stores hold the same training seed more than once (seeds {seeds}): one store per seed")
    return pd.concat(frames, ignore_index=True)


def across_seeds(long: pd.DataFrame) -> pd.DataFrame:
    """Per metric: per-seed 'mean ± se (t)' columns, then the mean over seeds ± its SE over seeds."""
    rows = {}
    for metric, g in long.groupby("metric", sort=False):
        row = {f"seed {int(s)}": f"{d:+.4g} ± {se:.2g} (t {t:+.1f})" for s, d, se, t in
               zip(g.seed, g["diff"], g.se, g.t)}
        mean = float(g["diff"].mean())
        se = float(g["diff"].std(ddof=1)) / math.sqrt(len(g)) if len(g) > 1 else float("nan")
        row["over seeds"] = f"{mean:+.4g} ± {se:.2g} (t {mean / se:+.1f})" if se and se == se else f"{mean:+.4g}"
        row["same sign"] = f"{int(((g['diff'] > 0) == (mean > 0)).sum())}/{len(g)}"
        rows[metric] = row
    return pd.DataFrame.from_dict(rows, orient="index")


@guarded(LookupError)
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m experiments.seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", action="append", required=True, help="MLflow tracking URI of one seed (repeatable)")
    p.add_argument("--member", default="e4e", help="member compared (default: %(default)s)")
    p.add_argument("--reference", default="psp", help="reference member (default: %(default)s)")
    p.add_argument("--experiment", default="synth", help="MLflow experiment (default: %(default)s)")
    p.add_argument("--grid", default="paper_ablation", help="grid whose members are read (default: %(default)s)")
    p.add_argument("--metrics", type=comma_list, default=",".join(DEFAULT_METRICS), help="comma-separated (default: %(default)s)")
    p.add_argument("--out", default=None, help="write <out>.csv and <out>.md (default: print only)")
    args = p.parse_args(argv)
    from e4e.tracking import check_store

    for uri in args.store:  # every store exists and answers before any is read (none is created)
        check_store(uri, must_exist=True)
    if args.out:
        check_out_dir(Path(args.out).parent, "--out")
    long = seed_differences(args.store, args.member, args.reference, args.experiment, args.grid, args.metrics)
    from experiments.report import to_markdown

    table = across_seeds(long)
    table.index.name = f"{args.member} - {args.reference}"
    md = to_markdown(table)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        long.to_csv(out.with_suffix(".csv"), index=False)
        caption = (f"Paired differences {args.member} - {args.reference} per training seed (per-image mean ± SE, t) "
                   f"and over {long.seed.nunique()} seeds (mean of the seed means ± SE over seeds).")
        out.with_suffix(".md").write_text(caption + "\n\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
