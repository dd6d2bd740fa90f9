"""Latent Editing Consistency (e4e paper §5.2, official ``metrics/LEC.py``), for any Inverter.

Per image: codes = E(x) (+ latent_avg: ``Inverter.invert`` adds it); edited image
G(codes + s*d) with constant noise, brought to the input size as the official inference does (average
pooling to 256; cars: rows 32:224); re-encoded codes2 = E(edited); distance
||codes - (codes2 - s*d)||_F over the n_latent x D code.

Two aggregations, both reported by ``lec_<direction>_<strength>`` (e.g. ``lec_age_3``):
- ``lec_official_<direction>_<strength>``: the official script's: means over consecutive batches of 8
  images (drop_last), keep the batch means within the 1st (``lower``) and 99th (``higher``)
  percentiles, average. Computed from per-image distances grouped by 8, so it does not depend on the
  evaluation batch size.
- ``lec_<direction>_<strength>``: per image, the same percentile filter applied to images, average.

Directions: ``ctx.directions[name]`` (a tensor [1,D] / [1,n_latent,D], a file path, or a GANSpace spec dict
``{'pca', 'index', 'start', 'end'}`` applied additively so that the inverse edit is exact), else the
domain's direction file ``e4e.editing.load_direction(domain, name)`` (FFHQ example: age.pt, s = 3).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from e4e.editing import direction_offset, load_direction
from metrics.registry import EvalContext, MetricResult, MetricUnavailable, register_metric, resize_like

OFFICIAL_BATCH = 8


def percentile_filter(values) -> np.ndarray:
    """Keep values within [1st percentile (lower), 99th percentile (higher)] (official LEC)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return arr
    lo = np.percentile(arr, 1, method="lower")
    hi = np.percentile(arr, 99, method="higher")
    return arr[(arr >= lo) & (arr <= hi)]


def lec_official(per_image, batch: int = OFFICIAL_BATCH) -> float:
    arr = np.asarray(per_image, dtype=np.float64)
    n = (arr.size // batch) * batch
    if n == 0:
        return float("nan")
    return float(percentile_filter(arr[:n].reshape(-1, batch).mean(1)).mean())


def lec_per_image(per_image) -> float:
    kept = percentile_filter(per_image)
    return float(kept.mean()) if kept.size else float("nan")


def resolve_direction(ctx: EvalContext, name: str):
    """``ctx.directions[name]`` (a tensor, a GANSpace spec or a file path), else the domain's file."""
    try:
        if name in ctx.directions:
            d = ctx.directions[name]
            return load_direction(d) if isinstance(d, (str, Path)) else d
        d = load_direction(ctx.domain, name)
    except FileNotFoundError as exc:
        raise MetricUnavailable(f"no editing direction {name!r}: {exc}") from exc
    if isinstance(d, dict):
        raise MetricUnavailable(f"{name!r} is a GANSpace PCA file; pass a component spec "
                                "{'pca', 'index', 'start', 'end'} in ctx.directions")
    return d


@torch.no_grad()
def lec_distances(inverter, batches, offset: torch.Tensor, strength: float, device="cpu") -> torch.Tensor:
    """Per-image LEC distances for ``batches`` of (x, codes) pairs (codes = inverter.invert(x))."""
    out = []
    for x, codes in batches:
        codes = codes.to(device)
        off = offset.to(codes)
        edited = resize_like(inverter.generate(codes + strength * off), tuple(x.shape[-2:]))
        codes2 = inverter.invert(edited)
        out.append((codes - (codes2 - strength * off)).flatten(1).norm(dim=1).float().cpu())
    return torch.cat(out)


def _lec(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    d = resolve_direction(ctx, direction)
    s = float(strength)
    inv = ctx.inversions()
    offset = direction_offset(d, inv[0].codes.shape[1], inv[0].codes.shape[2])
    dist = lec_distances(ctx.inverter, ((b.x, b.codes) for b in ctx._progress(inv, f"lec {direction}")), offset, s,
                         ctx.device)
    key = f"{direction}_{strength}"
    values = {f"lec_{key}": lec_per_image(dist), f"lec_official_{key}": lec_official(dist)}
    return MetricResult(values, {f"lec_{key}": dist.tolist()})


@register_metric("lec_<direction>_<strength>", needs=("inversions", "generator", "directions"))
def lec(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    """LEC for one direction and strength; both aggregations (official batch-of-8 and per image)."""
    return _lec(ctx, direction, strength)


@register_metric("lec_official_<direction>_<strength>", needs=("inversions", "generator", "directions"))
def lec_official_metric(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    """Same computation as ``lec_<direction>_<strength>`` (both aggregations are reported)."""
    return _lec(ctx, direction, strength)
