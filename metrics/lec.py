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

Against its trivial baseline. An encoder that ignores the image and returns one constant code c scores
exactly ||s*d||_F (c - (c - s*d)): with unit directions on every one of K rows, s*sqrt(K) (synth at
s = 12, K = 10: 37.9). When the edit is small beside an encoder's own re-inversion error, the raw LEC
measures that error, not how the edit survives. So, per image and aggregated as ``lec_``:
- ``lec_ratio_<direction>_<strength>``: LEC / ||s*d||_F (1 = no better than a constant code; 0 = the
  edit is undone exactly). ``lec_<direction>_0`` is the cycle without an edit (re-inversion error).
- ``lec_excess_<direction>_<strength>``: LEC(s) - LEC(0), the edit's own share of the inconsistency.
- ``lec_jac_<direction>_<strength>``: the same code distance measured where it changes the image,
  sqrt(sum_i delta_i^T M delta_i) over the K rows, with M = E_w[J^T J] of the generator's image
  Jacobian (the matrix ``w_recovery`` caches, ``metrics.latent.image_gram``). Directions that do not
  change the image count for nothing. ``lec_jac_ratio_<direction>_<strength>`` divides it by the
  constant code's value in the same metric, s*sqrt(sum_i d_i^T M d_i).

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


@torch.no_grad()
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
    dist = cycle_distances(ctx, direction, strength)
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


# ---------------------------------------------------------------------------------------------
# LEC against its trivial baseline: the constant encoder, the cycle without an edit, the Jacobian metric
# ---------------------------------------------------------------------------------------------
def cycle_residuals(ctx: EvalContext, direction: str, strength: str) -> torch.Tensor:
    """Per image, the LEC cycle's code residual codes - (E(G(codes + s d)) - s d) [N, n_latent, D]."""
    return torch.cat([b.codes.float().cpu() - back for b, back in
                      zip(ctx.inversions(), edit_cycle(ctx, direction, strength))])


def cycle_distances(ctx: EvalContext, direction: str, strength: str) -> torch.Tensor:
    """Per image, the LEC distance ||codes - (E(G(codes + s d)) - s d)||_F [N]."""
    return cycle_residuals(ctx, direction, strength).flatten(1).norm(dim=1)


def _constant_code_lec(ctx: EvalContext, direction: str, strength: str, gram=None) -> float:
    """The LEC of an encoder that returns one constant code: ||s d||_F (in the metric M when given)."""
    step = float(strength) * resolve_offset(ctx, direction)[0].double().cpu()  # [n_latent, D]
    if gram is None:
        return float(step.norm())
    from metrics.latent import _m_norm

    return float(_m_norm(step, gram).pow(2).sum().sqrt())


def _check_strength(metric: str, strength: str) -> float:
    s = float(strength)
    if s == 0:
        raise ValueError(f"{metric}: the strength must be non-zero (a ratio to the constant code's LEC, 0 at s = 0)")
    return s


@register_metric("lec_ratio_<direction>_<strength>", needs=("inversions", "generator", "directions"))
def lec_ratio(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    """LEC divided by a constant-code encoder's LEC ||s d||_F (1 = no better than ignoring the image)."""
    key = f"lec_ratio_{direction}_{strength}"
    _check_strength(key, strength)
    const = _constant_code_lec(ctx, direction, strength)
    ratio = cycle_distances(ctx, direction, strength).double() / const
    return MetricResult({key: lec_per_image(ratio), f"lec_constant_{direction}_{strength}": const},
                        {key: ratio.tolist()})


@register_metric("lec_excess_<direction>_<strength>", needs=("inversions", "generator", "directions"))
def lec_excess(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    """Per image LEC(s) - LEC(0): the inconsistency the edit adds to the encoder's re-inversion error."""
    key = f"lec_excess_{direction}_{strength}"
    at_s = cycle_distances(ctx, direction, strength).double()
    at_0 = cycle_distances(ctx, direction, "0").double()
    excess = at_s - at_0
    return MetricResult({key: lec_per_image(excess), f"lec_{direction}_0": lec_per_image(at_0)},
                        {key: excess.tolist(), f"lec_{direction}_0": at_0.tolist()})


@register_metric("lec_jac_<direction>_<strength>", needs=("inversions", "generator", "directions"))
def lec_jac(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    """LEC in the metric of the image Jacobian (directions that do not change the image count for
    nothing), and its ratio to the constant code's value in that metric."""
    from metrics.latent import _m_norm, image_gram

    key = f"{direction}_{strength}"
    _check_strength(f"lec_jac_{key}", strength)
    gram = image_gram(ctx)
    dist = _m_norm(cycle_residuals(ctx, direction, strength), gram).pow(2).sum(1).sqrt()
    const = _constant_code_lec(ctx, direction, strength, gram)
    ratio = dist / const
    return MetricResult({f"lec_jac_{key}": lec_per_image(dist), f"lec_jac_ratio_{key}": lec_per_image(ratio),
                         f"lec_jac_constant_{key}": const},
                        {f"lec_jac_{key}": dist.tolist(), f"lec_jac_ratio_{key}": ratio.tolist()})
