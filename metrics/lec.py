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

Image-space variants of the same cycle (w = E(x), w' = E(G(w + s*d)) - s*d, computed once per
direction and strength and shared with ``lec_``), aggregated per image as ``lec_``:
- ``lec_img_<direction>_<strength>``: per-pixel MSE on [-1, 1] between G(w') and the first inversion
  G(w), both at the input size.
- ``lec_feat_<direction>_<strength>``: 1 - cosine similarity of the domain's identity features
  (synth: the attribute network's penultimate features; FFHQ ArcFace, other domains MoCo) of G(w')
  and G(w); unavailable when that network's file is absent.

Directions: ``ctx.directions[name]`` (a tensor [1,D] / [1,n_latent,D], a file path, or a GANSpace spec dict
``{'pca', 'index', 'start', 'end'}`` applied additively so that the inverse edit is exact), else the
domain's direction file ``e4e.editing.load_direction(domain, name)`` (FFHQ example: age.pt, s = 3).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from e4e.editing import direction_offset, load_direction
from metrics.distortion import l2_per_image
from metrics.registry import (EvalContext, MetricResult, MetricUnavailable, register_metric, resize_like,
                              unavailable_on_missing)

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


def resolve_offset(ctx: EvalContext, name: str) -> torch.Tensor:
    """Unit-strength per-row offset [1, n_latent, D] of direction ``name`` for this context's codes."""
    direction = resolve_direction(ctx, name)  # before inverting: an unknown direction costs nothing
    codes = ctx.inversions()[0].codes
    return direction_offset(direction, codes.shape[1], codes.shape[2])


@torch.no_grad()
def edit_codes(codes: torch.Tensor, offset: torch.Tensor, strength: float) -> torch.Tensor:
    """``codes + strength * offset`` (the offset cast to the codes' device and dtype)."""
    return codes + strength * offset.to(codes)


def edited_inversions(ctx: EvalContext, direction: str, strength) -> list[torch.Tensor]:
    """Per evaluation batch, the edited inversions G(E(x) + s*d) at the images' size (CPU); computed
    once per context, direction and strength and shared by every metric that looks at that edit
    (``lec_*``, ``edit_<attr>`` at ``edit_strength``, ``edit_fid_*``)."""

    def build():
        offset, s = resolve_offset(ctx, direction), float(strength)
        return [resize_like(ctx.inverter.generate(edit_codes(b.codes.to(ctx.device), offset, s)),
                            ctx.image_hw).float().cpu()
                for b in ctx._progress(ctx.inversions(), f"edit {direction} {s:g}")]

    return ctx.cached(f"edited:{direction}:{float(strength)}", build)


@torch.no_grad()
def edit_cycle(ctx: EvalContext, direction: str, strength: str) -> list[torch.Tensor]:
    """Per evaluation batch, the codes after the LEC cycle E(G(w + s*d)) - s*d (CPU); computed once per
    direction and strength and shared by the latent (``lec_``) and image-space (``lec_img_``,
    ``lec_feat_``) variants."""

    def build():
        offset, s = resolve_offset(ctx, direction), float(strength)
        edited = edited_inversions(ctx, direction, strength)
        return [edit_codes(ctx.inverter.invert(e.to(ctx.device)), offset, -s).float().cpu()
                for e in ctx._progress(edited, f"lec {direction}")]

    return ctx.cached(f"lec_cycle:{direction}:{float(strength)}", build)


def _lec(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    cycled = edit_cycle(ctx, direction, strength)
    dist = torch.cat([(b.codes - back).flatten(1).norm(dim=1) for b, back in zip(ctx.inversions(), cycled)])
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


# ---------------------------------------------------------------------------------------------
# image-space editing consistency
# ---------------------------------------------------------------------------------------------
def domain_identity(ctx: EvalContext, metric: str):
    """The domain's identity network (``e4e.data`` domain table; synth: the attribute net's
    L2-normalised features), shared with the ``id_*`` metrics; MetricUnavailable when absent."""
    from e4e.data import DOMAINS
    from e4e.identity import build_identity

    if ctx.domain not in DOMAINS:
        raise MetricUnavailable(f"{metric}: no identity network is known for domain {ctx.domain!r}")
    kind = DOMAINS[ctx.domain].identity
    with unavailable_on_missing(metric):
        return ctx.cached(f"identity:{kind}", lambda: build_identity(kind, ctx.device))


@torch.no_grad()
def cycled_images(ctx: EvalContext, direction: str, strength: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch: the first inversion G(w) and G(E(G(w + s*d)) - s*d), both at the images' size (CPU);
    computed once per direction and strength (``lec_img_`` and ``lec_feat_`` share them)."""

    def build():
        return [(b.y, resize_like(ctx.inverter.generate(back.to(ctx.device)), ctx.image_hw).float().cpu())
                for b, back in zip(ctx.inversions(), edit_cycle(ctx, direction, strength))]

    return ctx.cached(f"lec_cycle_images:{direction}:{float(strength)}", build)


@torch.no_grad()
def _image_lec(ctx: EvalContext, prefix: str, direction: str, strength: str, score) -> MetricResult:
    dist = torch.cat([score(y0, y1) for y0, y1 in cycled_images(ctx, direction, strength)])
    key = f"{prefix}_{direction}_{strength}"
    return MetricResult({key: lec_per_image(dist)}, {key: dist.tolist()})


@register_metric("lec_img_<direction>_<strength>", needs=("inversions", "generator", "directions"))
def lec_img(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    """Image-space LEC: per-pixel MSE of G(E(G(w + s d)) - s d) vs the inversion G(w), per image."""
    return _image_lec(ctx, "lec_img", direction, strength, l2_per_image)


@register_metric("lec_feat_<direction>_<strength>", needs=("inversions", "generator", "directions", "attrnet"))
def lec_feat(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    """Feature-space LEC: 1 - cosine of identity features of G(E(G(w + s d)) - s d) and G(w), per image."""
    net = domain_identity(ctx, f"lec_feat_{direction}_{strength}")

    def score(y0, y1):
        return 1 - (net(y0.to(ctx.device)) * net(y1.to(ctx.device))).sum(1).float().cpu()

    return _image_lec(ctx, "lec_feat", direction, strength, score)
