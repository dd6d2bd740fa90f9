"""The 2^3 factorial analysis of e4e's three components, from the exported per-seed files alone.

Factors: ``delta_reg`` (L_d-reg), ``adversarial`` (L_adv, the latent discriminator) and
``progressive`` (the progressive schedule), each on or off, coded x = +1 / -1. An effect is a
contrast over the 8 e4e members of one seed, sum_cells c * y / 4, with c the product of the effect's
factors' x (the standard factorial effect):
- main effect of A: mean of the 4 members with A on minus mean of the 4 with A off;
- interaction AB: half the difference between A's effect with B on and A's effect with B off
  (positive: A's effect is larger with B on).
A ``y = mu + sum_effects (effect / 2) * prod(x)`` is recovered exactly.

Within a seed the contrast is taken per test image (paired: every member sees the same images), so
the seed's estimate is the mean over images and its standard error sd / sqrt(n_images). Over seeds:
the mean of the seed estimates and sd / sqrt(n_seeds) (``se_basis`` ``seeds``), the error that
contains the training-seed variance; with one seed only the per-image error is available
(``se_basis`` ``images``), which does not. Metrics that exist only per run (FID, w recovery) are
contrasted per run: with one seed they have no error.

The same contrast machinery gives the paper-style sequential view (``SEQUENCE``: pSp -> + W^k ->
+ d-reg -> + progressive -> + L_adv, each step member minus the previous one) and the members' levels.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

FACTORS = ("delta_reg", "adversarial", "progressive")
LABELS = {"delta_reg": "d-reg", "adversarial": "L_adv", "progressive": "progressive"}
EFFECTS = [c for k in (1, 2, 3) for c in itertools.combinations(FACTORS, k)]
COLUMNS = ["effect", "metric", "estimate", "se", "t", "n_seeds", "steps", "n_images", "se_basis", "same_sign"]


def effect_name(factors: tuple[str, ...]) -> str:
    return " x ".join(LABELS[f] for f in factors)


def lec_metrics(direction: str = "smile", strength: float | int = 12) -> list[str]:
    s = f"{direction}_{float(strength):g}"
    return [f"lec_{s}", f"lec_ratio_{s}", f"lec_excess_{s}", f"lec_{direction}_0", f"lec_jac_{s}", f"lec_jac_ratio_{s}",
            f"lec_img_{s}", f"lec_feat_{s}"]


def default_metrics(directions=("age", "smile"), strength: float | int = 12) -> list[str]:
    """The study's metrics: distortion, LEC along each direction (raw and against its baselines),
    distance to W, w recovery, edit gain and leak, realism (edit FID along the first direction)."""
    lec = [m for d in directions for m in lec_metrics(d, strength)]
    return (["l2", "msssim", "id_domain"] + lec
            + ["latent_dist_w_pca95", "latent_dist_w_pca95_resid", "latent_offset", "w_recovery", "w_recovery_l2",
               "edit_smile_gain_raw", "edit_age_gain_raw", "edit_yaw_gain_raw", "edit_leak",
               f"edit_fid_smile_{float(strength):g}", "fid_domain"])


def with_derived(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per-image columns derived from the evaluation's: ``edit_leak`` = mean of the ``edit_<attr>_leak``."""
    leaks = [c for c in per_image.columns if c.startswith("edit_") and c.endswith("_leak")]
    return per_image.assign(edit_leak=per_image[leaks].mean(axis=1)) if leaks else per_image


# ------------------------------------------------------------------------------------------------
# which member is which cell
# ------------------------------------------------------------------------------------------------
def cells(members: Mapping[str, dict]) -> dict[tuple[bool, ...], str]:
    """(delta_reg, adversarial, progressive) -> member name, for the e4e members of one seed."""
    out = {}
    for name, m in members.items():
        meta = m["meta"]
        if meta["method"] != "e4e":
            continue
        key = tuple(bool(meta["switches"][f]) for f in FACTORS)
        if key in out:
            raise ValueError(f"members {out[key]!r} and {name!r} are the same cell {dict(zip(FACTORS, key))}")
        out[key] = name
    return out


def effect_weights(members: Mapping[str, dict], factors: tuple[str, ...]) -> dict[str, float]:
    """member -> contrast weight of one effect (all 8 cells needed)."""
    by_cell = cells(members)
    missing = [dict(zip(FACTORS, c)) for c in itertools.product((False, True), repeat=3) if c not in by_cell]
    if missing:
        raise LookupError(f"the factorial needs all 8 e4e cells; missing {missing}")
    idx = [FACTORS.index(f) for f in factors]
    return {name: math.prod(1.0 if cell[i] else -1.0 for i in idx) / 4 for cell, name in by_cell.items()}


def find_member(members: Mapping[str, dict], method: str, **switches: bool) -> str:
    for name, m in members.items():
        meta = m["meta"]
        if meta["method"] == method and all(bool(meta["switches"].get(k)) == v for k, v in switches.items()):
            return name
    raise LookupError(f"no member with method {method!r} and {switches}")


# ------------------------------------------------------------------------------------------------
# contrasts
# ------------------------------------------------------------------------------------------------
def seed_contrast(members: Mapping[str, dict], weights: Mapping[str, float], metric: str) -> dict | None:
    """One seed's estimate of sum_m w_m * y_m: per image (paired) when every member has ``metric``
    per image, else per run. None when a member lacks the metric."""
    frames = {m: with_derived(members[m]["per_image"]) for m in weights}
    if all(metric in f.columns for f in frames.values()):
        aligned = pd.concat({m: f.set_index("image")[metric] for m, f in frames.items()}, axis=1).dropna()
        per = aligned.to_numpy() @ np.array([weights[m] for m in aligned.columns])
        n = len(per)
        se = float(per.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
        return {"estimate": float(per.mean()), "se": se, "n_images": n}
    values = [members[m]["metrics"].get(metric) for m in weights]
    if any(v is None for v in values):
        return None
    n = min(int(members[m]["meta"]["n_images"]) for m in weights)
    return {"estimate": float(sum(w * v for w, v in zip(weights.values(), values))), "se": float("nan"), "n_images": n}


def combine(per_seed: list[dict]) -> dict:
    """Mean over seeds and its SE over seeds (one seed: the per-image SE)."""
    est = np.array([r["estimate"] for r in per_seed])
    k = len(est)
    mean = float(est.mean())
    if k > 1:
        se, basis = float(est.std(ddof=1)) / math.sqrt(k), "seeds"
    else:
        se, basis = per_seed[0]["se"], "images"
    t = mean / se if se and se == se and se > 0 else float("nan")
    return {"estimate": mean, "se": se, "t": t, "n_seeds": k, "se_basis": basis,
            "n_images": min(r["n_images"] for r in per_seed),
            "same_sign": f"{int((np.sign(est) == np.sign(mean)).sum())}/{k}"}


def _steps(study: Mapping[int, Mapping[str, dict]], names: Iterable[str]) -> int | None:
    steps = {study[s][n]["meta"].get("steps") for s in study for n in names if n in study[s]}
    if len(steps) > 1:
        raise ValueError(f"members trained for different lengths {sorted(steps, key=str)}: not one study")
    return steps.pop() if steps else None


def contrast_table(study: Mapping[int, Mapping[str, dict]], contrasts: Mapping[str, callable],
                   metrics: Iterable[str]) -> pd.DataFrame:
    """``contrasts``: row label -> fn(members of one seed) -> weights. One row per (label, metric)."""
    rows = []
    for label, weights_of in contrasts.items():
        weights = {s: weights_of(members) for s, members in study.items()}
        steps = _steps(study, {n for w in weights.values() for n in w})
        for metric in metrics:
            per_seed = [seed_contrast(study[s], weights[s], metric) for s in sorted(study)]
            if not per_seed or any(r is None for r in per_seed):
                continue
            rows.append({"effect": label, "metric": metric, **combine(per_seed), "steps": steps})
    return pd.DataFrame(rows, columns=COLUMNS)


def effects_table(study: Mapping[int, Mapping[str, dict]], metrics: Iterable[str]) -> pd.DataFrame:
    """Main effects and interactions of the three components on every metric."""
    contrasts = {effect_name(e): (lambda members, e=e: effect_weights(members, e)) for e in EFFECTS}
    return contrast_table(study, contrasts, list(metrics))


# pSp -> + W^k (one w plus offsets, no regulariser) -> + d-reg -> + progressive -> + L_adv (= e4e)
SEQUENCE = [("pSp", "psp", {}),
            ("+ W^k", "e4e", {"delta_reg": False, "adversarial": False, "progressive": False}),
            ("+ d-reg", "e4e", {"delta_reg": True, "adversarial": False, "progressive": False}),
            ("+ progressive", "e4e", {"delta_reg": True, "adversarial": False, "progressive": True}),
            ("+ L_adv", "e4e", {"delta_reg": True, "adversarial": True, "progressive": True})]


def sequential_table(study: Mapping[int, Mapping[str, dict]], metrics: Iterable[str]) -> pd.DataFrame:
    """Each step of ``SEQUENCE`` as the paired difference from the previous configuration."""
    contrasts = {}
    for (_, m0, s0), (label, m1, s1) in zip(SEQUENCE, SEQUENCE[1:]):
        contrasts[label] = (lambda members, a=(m0, s0), b=(m1, s1):
                            {find_member(members, b[0], **b[1]): 1.0, find_member(members, a[0], **a[1]): -1.0})
    first, last = SEQUENCE[0], SEQUENCE[-1]
    contrasts["e4e − pSp (all steps)"] = (lambda members: {find_member(members, last[1], **last[2]): 1.0,
                                                           find_member(members, first[1], **first[2]): -1.0})
    return contrast_table(study, contrasts, list(metrics))


def pair_table(study: Mapping[int, Mapping[str, dict]], member: str, reference: str,
               metrics: Iterable[str]) -> pd.DataFrame:
    """``member`` - ``reference``, paired by image, on the seeds that have both."""
    have = {s: m for s, m in study.items() if member in m and reference in m}
    if not have:
        raise LookupError(f"no seed has both {member!r} and {reference!r}")
    return contrast_table(have, {f"{member} − {reference}": lambda members: {member: 1.0, reference: -1.0}},
                          list(metrics))


def levels_table(study: Mapping[int, Mapping[str, dict]], metrics: Iterable[str]) -> pd.DataFrame:
    """Every member's value of every metric, mean over seeds (SE over seeds, or per image for one)."""
    names = list(dict.fromkeys(n for s in study.values() for n in s))
    contrasts = {n: (lambda members, n=n: {n: 1.0}) for n in names if all(n in s for s in study.values())}
    return contrast_table(study, contrasts, list(metrics)).rename(columns={"effect": "member"})
