"""Pure-PyTorch StyleGAN2 operators: FIR up/down-sampling (upfirdn2d) and fused bias + activation.

No compiled extension: everything is composed of differentiable PyTorch ops, so first and second
derivatives (needed by R1 and path-length regularisation) work on CPU and GPU alike.

Semantics follow StyleGAN2 (Karras et al., 2020): ``upfirdn2d`` zero-inserts ``up - 1`` samples
after every input sample, pads (negative pads crop), applies a true 2-D convolution with ``kernel``
and keeps every ``down``-th sample.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["make_kernel", "upfirdn2d", "fused_leaky_relu", "FusedLeakyReLU", "parse_pad"]


def make_kernel(k) -> torch.Tensor:
    """Normalised 2-D FIR kernel from a 1-D (separable, outer product) or 2-D list/tensor."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def parse_pad(pad) -> tuple[int, int, int, int]:
    """(p0, p1) for both axes, or (x0, x1, y0, y1)."""
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad
    raise ValueError(f"pad must have 2 or 4 entries, got {pad}")


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter with ``kernel`` (true convolution), downsample.

    x: [B, C, H, W]; kernel: [kh, kw]. Output size per axis: (n*up + p0 + p1 - k) // down + 1.
    """
    x0, x1, y0, y1 = parse_pad(pad)
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    # F.pad handles negative values as crops.
    if x0 or x1 or y0 or y1:
        x = F.pad(x, (x0, x1, y0, y1))
    kh, kw = kernel.shape
    weight = torch.flip(kernel, (0, 1)).to(dtype=x.dtype, device=x.device)
    weight = weight.view(1, 1, kh, kw).expand(c, 1, kh, kw)
    if down > 1 and up == 1:
        # Only every down-th output is kept: let the convolution stride do the decimation.
        return F.conv2d(x, weight, stride=down, groups=c)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2,
                     scale: float = math.sqrt(2)) -> torch.Tensor:
    """leaky_relu(x + bias) * scale, bias broadcast over dim 1."""
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.view(shape).to(x.dtype)
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(torch.nn.Module):
    """Per-channel bias + leaky ReLU(0.2) * sqrt(2); parameter name ``bias`` as in the official files."""

    def __init__(self, channels: int, bias: bool = True, negative_slope: float = 0.2, scale: float = math.sqrt(2)):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(channels)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)
