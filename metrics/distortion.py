"""Distortion metrics: reconstruction vs input (e4e paper §5, Table 1/3).

Evaluation size: the size of the real images as the domain's test transform delivers them (256x256
for faces, 192x256 for cars as in the paper; native 64x64 for synth, which is smaller); the
generator output is pooled to it as the official inference does (``registry.resize_like``).

- ``l2``: per-pixel MSE on [-1, 1] images, per image then averaged.
- ``lpips_alex``: LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018, the ``lpips`` package). The
  package's linear layers ship with it; the torchvision AlexNet trunk must be the local file
  ``alexnet-owt-7be5be79.pth`` (torch hub cache / ./weights): it is loaded by hand into a trunk built
  with ``pnet_rand=True`` so nothing is downloaded. Absent -> ``MetricUnavailable``.
- ``msssim``: multi-scale SSIM (Wang, Simoncelli & Bovik 2003) on images mapped to [0, 1] ((x + 1) / 2,
  clamped) with data range 1, the standard convention (SSIM's luminance term is not shift-invariant,
  so [-1, 1] images with range 2 give different, lower values). Gaussian window 11 / sigma 1.5, valid
  convolution, K1 = 0.01, K2 = 0.03, 2x2 average-pool downsampling (odd sizes: the last row/column
  is repeated, as the reference MATLAB code's 'symmetric' filtering), exponents (0.0448, 0.2856,
  0.3001, 0.2363, 0.1333). Contrast-structure terms are clamped at 0 before the powers (negative
  values would give NaN). Scales are reduced automatically so that the coarsest scale is still at
  least the window size (64 px -> 3 scales; >= 176 px -> all 5); the remaining exponents are
  renormalised to sum to 1. Per image: mean over RGB channels. Equal to pytorch-msssim's ``ms_ssim``
  (``data_range=1``) on even-sized images of more than 160 px (tested at 256x256 and 192x256).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from metrics.registry import EvalContext, MetricResult, register_metric, unavailable_on_missing

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ---------------------------------------------------------------------------------------------
# per-image functions (usable outside the registry)
# ---------------------------------------------------------------------------------------------
def l2_per_image(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (y.float() - x.float()).pow(2).flatten(1).mean(1)


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filtering, per channel (depthwise convolutions)."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _ssim_terms(x, y, g, data_range):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    c = x.shape[1]
    mx, my, exx, eyy, exy = _blur(torch.cat([x, y, x * x, y * y, x * y], 1), g).split(c, dim=1)
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).mean((-2, -1)), cs.mean((-2, -1))  # [B, C] each


def msssim_scales(h: int, w: int, win: int = 11, max_scales: int = len(MSSSIM_WEIGHTS)) -> int:
    """Number of scales whose (pooled, ceil-halved) size is still at least the window."""
    if min(h, w) < win:
        raise ValueError(f"MS-SSIM needs images of at least {win}x{win}, got {h}x{w}")
    n, side = 1, min(h, w)
    while n < max_scales and -(-side // 2) >= win:
        n, side = n + 1, -(-side // 2)
    return n


def msssim_per_image(y: torch.Tensor, x: torch.Tensor, data_range: float = 1.0, win: int = 11,
                     sigma: float = 1.5, weights=MSSSIM_WEIGHTS) -> torch.Tensor:
    """MS-SSIM per image [B] of images in [0, ``data_range``] (see the module docstring)."""
    x, y = x.double(), y.double()  # float32 moments err by ~1e-5 in the contrast-structure terms
    n = msssim_scales(*x.shape[-2:], win=win, max_scales=len(weights))
    w = torch.tensor(weights[:n], dtype=torch.float64)
    w = w / w.sum()
    g = _gaussian_window(win, sigma, torch.float64).to(x.device)
    factors = []
    for i in range(n):
        ssim, cs = _ssim_terms(x, y, g, data_range)
        factors.append((ssim if i == n - 1 else cs).clamp_min(0))
        if i < n - 1:
            pad = (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)
            x = F.avg_pool2d(F.pad(x, pad, mode="replicate"), 2)
            y = F.avg_pool2d(F.pad(y, pad, mode="replicate"), 2)
    vals = torch.stack(factors)  # [n, B, C]
    return torch.prod(vals ** w.to(vals).view(-1, 1, 1), dim=0).mean(1).float()


def msssim_model_range(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MS-SSIM per image of model-range images ([-1, 1]): mapped to [0, 1], data range 1."""
    to01 = lambda t: ((t.float() + 1) / 2).clamp(0, 1)  # noqa: E731
    return msssim_per_image(to01(y), to01(x), data_range=1.0)


def build_lpips_alex(device="cpu"):
    """LPIPS-alex with the trunk from the local torchvision file (``e4e.losses.LPIPSLoss``)."""
    from e4e.losses import LPIPSLoss

    return LPIPSLoss("alex").to(device)


# ---------------------------------------------------------------------------------------------
# registered metrics
# ---------------------------------------------------------------------------------------------
def _paired(ctx: EvalContext, name: str, fn) -> MetricResult:
    vals = []
    with torch.no_grad():
        for b in ctx.inversions():
            vals.append(fn(b.y.to(ctx.device), b.x.to(ctx.device)).float().cpu())
    v = torch.cat(vals)
    return MetricResult({name: float(v.mean())}, {name: v.tolist()})


@register_metric("l2", needs=("inversions",))
def l2(ctx: EvalContext) -> MetricResult:
    """Per-pixel MSE on [-1,1] at the evaluation size."""
    return _paired(ctx, "l2", l2_per_image)


@register_metric("msssim", needs=("inversions",))
def msssim(ctx: EvalContext) -> MetricResult:
    """Multi-scale SSIM (Wang et al. 2003) on [0, 1] images, data range 1, scales reduced for small images."""
    return _paired(ctx, "msssim", msssim_model_range)


@register_metric("lpips_alex", needs=("inversions", "weights:alexnet"))
def lpips_alex(ctx: EvalContext) -> MetricResult:
    """LPIPS v0.1 AlexNet at the evaluation size (trunk from the local torchvision file)."""
    with unavailable_on_missing("lpips_alex"):
        net = ctx.cached("lpips_alex", lambda: build_lpips_alex(ctx.device))
    return _paired(ctx, "lpips_alex", net.per_image)
