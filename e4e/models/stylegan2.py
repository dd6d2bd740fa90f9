"""StyleGAN2 generator and image discriminator (Karras et al., CVPR 2020), state-dict compatible
with the rosinality PyTorch checkpoints used by e4e / pSp / ReStyle (stylegan2-ffhq-config-f.pt,
the cars, horse and church generators).

Key layout: ``style.1..n_mlp`` (mapping; ``style.0`` is the parameter-free PixelNorm), ``input.input``,
``conv1``, ``to_rgb1``, ``convs.i`` (``conv.blur.kernel`` on the upsampling ones), ``to_rgbs.i``
(``upsample.kernel``), ``noises.noise_i``. Equalised learning rate is applied at run time.

Public API (docs/design.md §2): ``mapping(z)``, ``synthesis(w_plus, noise_mode)``, ``mean_latent(n, seed)``,
attributes ``n_latent``, ``style_dim``, ``size``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from e4e.ops import FusedLeakyReLU, fused_leaky_relu, make_kernel, upfirdn2d

BLUR_KERNEL = (1, 3, 3, 1)


def default_channels(channel_multiplier: int = 2, channel_max: int = 512) -> dict[int, int]:
    """rosinality's channel table, optionally capped at ``channel_max`` (for small generators)."""
    cm = channel_multiplier
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm,
             512: 32 * cm, 1024: 16 * cm}
    return {r: min(c, channel_max) for r, c in table.items()}


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
    """FIR upsampling by ``factor`` (ToRGB skip path); buffer ``kernel`` scaled by factor**2."""

    def __init__(self, kernel=BLUR_KERNEL, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    def __init__(self, kernel, pad, upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor ** 2
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class EqualConv2d(nn.Module):
    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with equalised lr; ``lr_mul`` scales both weight and bias (mapping net: 0.01)."""

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x):
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)


class ModulatedConv2d(nn.Module):
    """Modulated convolution with optional demodulation (eps 1e-8), 2x transposed-conv upsampling
    followed by blur, or blur followed by stride-2 downsampling.

    Two exact implementations, both tested against a per-sample loop: ``fused=False`` modulates the
    activations and demodulates the output (one batched convolution); ``fused=True`` builds
    per-sample weights for a grouped convolution (the rosinality reference). ``fused=None``
    (default) picks per call: grouped for inference on feature maps that are large for their
    width (``h*w >= 16*in_channels``), where the two extra elementwise passes over the activations
    cost more than the per-sample weights; activation modulation whenever autograd records (its
    backward is cheaper). Measured on 2 CPU threads, batch 8 (bench/bench_models.py): forward,
    activation modulation is 1.5x faster for 512 channels at 32 px, grouped 1.3x faster for 32
    channels at 1024 px; forward+backward to W+ of the 64 px generator, activation modulation
    2.3x faster than grouped.
    """

    AUTO_PIXELS_PER_CHANNEL = 16

    def __init__(self, in_ch, out_ch, kernel_size, style_dim, demodulate=True, upsample=False,
                 downsample=False, blur_kernel=BLUR_KERNEL, fused=None):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size, self.in_channel, self.out_channel = kernel_size, in_ch, out_ch
        self.upsample, self.downsample, self.demodulate, self.fused = upsample, downsample, demodulate, fused
        factor = 2
        if upsample:
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        if downsample:
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1)

    def forward(self, x, style):
        b, c, h, w = x.shape
        s = self.modulation(style)  # [B, in]
        weight = self.scale * self.weight[0]  # [out, in, k, k]
        fused = self.fused
        if fused is None:  # auto: grouped only for inference on large maps (its backward is slower)
            needs_grad = torch.is_grad_enabled() and (x.requires_grad or s.requires_grad)
            fused = not needs_grad and h * w >= self.AUTO_PIXELS_PER_CHANNEL * c
        if fused:
            return self._forward_grouped(x, s, weight)
        if self.demodulate:
            wsq = weight.pow(2).sum((2, 3))  # [out, in]
            dcoef = torch.rsqrt(s.pow(2) @ wsq.t() + self.eps)  # [B, out]
        x = x * s.view(b, c, 1, 1)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            out = self.blur(out)
        elif self.downsample:
            out = F.conv2d(self.blur(x), weight, stride=2)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            out = out * dcoef.view(b, -1, 1, 1)
        return out

    def _forward_grouped(self, x, s, weight):
        b, c, h, w = x.shape
        k, o = self.kernel_size, self.out_channel
        weight = weight.unsqueeze(0) * s.view(b, 1, c, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4)) + self.eps).view(b, o, 1, 1, 1)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * c, o, k, k)
            out = F.conv_transpose2d(x.reshape(1, b * c, h, w), weight, stride=2, groups=b)
            return self.blur(out.view(b, o, out.shape[-2], out.shape[-1]))
        weight = weight.reshape(b * o, c, k, k)
        if self.downsample:
            x = self.blur(x)
            out = F.conv2d(x.reshape(1, b * c, *x.shape[-2:]), weight, stride=2, groups=b)
        else:
            out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=self.padding, groups=b)
        return out.view(b, o, out.shape[-2], out.shape[-1])


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise=None):
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, x.shape[2], x.shape[3]).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int):
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    def __init__(self, in_ch, out_ch, kernel_size, style_dim, upsample=False, blur_kernel=BLUR_KERNEL,
                 demodulate=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim, demodulate=demodulate,
                                    upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x, style, noise=None):
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    def __init__(self, in_ch, style_dim, upsample=True, blur_kernel=BLUR_KERNEL):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


NOISE_MODES = ("const", "random", "none")


class Generator(nn.Module):
    """StyleGAN2 generator. ``channels`` overrides the per-resolution channel table (small
    generators such as the synth one); by default the rosinality table with ``channel_multiplier``
    capped at ``channel_max``."""

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 blur_kernel=BLUR_KERNEL, lr_mlp: float = 0.01, channel_max: int = 512,
                 channels: dict[int, int] | None = None):
        super().__init__()
        log_size = int(math.log2(size))
        if 2 ** log_size != size or size < 8:
            raise ValueError(f"Generator size must be a power of two >= 8, got {size}")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier = channel_multiplier
        self.channels = dict(channels) if channels else default_channels(channel_multiplier, channel_max)
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)])
        ch = self.channels
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.log_size = log_size
        self.num_layers = (log_size - 2) * 2 + 1
        self.convs, self.upsamples, self.to_rgbs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = (i + 5) // 2
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, 2 ** r, 2 ** r))
        in_ch = ch[4]
        for i in range(3, log_size + 1):
            out_ch = ch[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch
        self.n_latent = log_size * 2 - 2

    # -- mapping -------------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D] -> w [B, D]."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 10_000, seed: int = 0) -> torch.Tensor:
        """Mean of w over ``n`` seeded z samples: [1, D]."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=g).to(self.input.input.device)
        return torch.cat([self.mapping(c) for c in z.split(4096)]).mean(0, keepdim=True)

    def const_noise(self) -> list[torch.Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    # -- synthesis -----------------------------------------------------------------------------
    def synthesis(self, w_plus: torch.Tensor, noise_mode: str = "const", noise=None) -> torch.Tensor:
        """w_plus [B, n_latent, D] (or [B, D], broadcast) -> image [B, 3, size, size] in about [-1, 1].

        noise_mode: 'const' (the stored ``noises`` buffers), 'random' (fresh N(0,1)), 'none' (zeros);
        an explicit ``noise`` list (one map per layer) overrides it.
        """
        if w_plus.ndim == 2:
            w_plus = w_plus.unsqueeze(1).expand(-1, self.n_latent, -1)
        if w_plus.ndim != 3 or w_plus.shape[1] != self.n_latent or w_plus.shape[2] != self.style_dim:
            raise ValueError(f"expected w_plus [B, {self.n_latent}, {self.style_dim}], got {tuple(w_plus.shape)}")
        if noise is None:
            if noise_mode == "const":
                noise = self.const_noise()
            elif noise_mode == "random":
                noise = [None] * self.num_layers
            elif noise_mode == "none":
                noise = [torch.zeros_like(n) for n in self.const_noise()]
            else:
                raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        b = w_plus.shape[0]
        out = self.input(b)
        out = self.conv1(out, w_plus[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        i = 1
        for conv_up, conv, n1, n2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2],
                                                 self.to_rgbs):
            out = conv_up(out, w_plus[:, i], noise=n1)
            out = conv(out, w_plus[:, i + 1], noise=n2)
            skip = to_rgb(out, w_plus[:, i + 2], skip)
            i += 2
        return skip

    def forward(self, w_plus, noise_mode: str = "const", noise=None):
        return self.synthesis(w_plus, noise_mode=noise_mode, noise=noise)

    def sample(self, z: torch.Tensor, truncation: float = 1.0, w_avg: torch.Tensor | None = None,
               mixing_z: torch.Tensor | None = None, mix_layer: int | None = None,
               noise_mode: str = "random", return_w: bool = False):
        """Images from z with optional truncation and style mixing (rows >= ``mix_layer`` from ``mixing_z``)."""
        w = self.mapping(z)
        if truncation != 1.0:
            if w_avg is None:
                raise ValueError("truncation needs w_avg (Generator.mean_latent)")
            w = w_avg + truncation * (w - w_avg)
        w_plus = w.unsqueeze(1).repeat(1, self.n_latent, 1)
        if mixing_z is not None:
            w2 = self.mapping(mixing_z)
            if truncation != 1.0:
                w2 = w_avg + truncation * (w2 - w_avg)
            w_plus[:, mix_layer:] = w2.unsqueeze(1)
        img = self.synthesis(w_plus, noise_mode=noise_mode)
        return (img, w_plus) if return_w else img

    def config(self) -> dict:
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": self.channel_multiplier, "channels": dict(self.channels)}


# ---------------------------------------------------------------------------------------------
# Image discriminator (rosinality layout: convs.0 ConvLayer, convs.i ResBlock, final_conv, final_linear)
# ---------------------------------------------------------------------------------------------
class ConvLayer(nn.Sequential):
    def __init__(self, in_ch, out_ch, kernel_size, downsample=False, blur_kernel=BLUR_KERNEL, bias=True,
                 activate=True):
        layers = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, padding=padding, stride=stride,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, blur_kernel=BLUR_KERNEL):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, activate=False, bias=False, blur_kernel=blur_kernel)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    def __init__(self, size: int, channel_multiplier: int = 2, blur_kernel=BLUR_KERNEL, channel_max: int = 512,
                 channels: dict[int, int] | None = None):
        super().__init__()
        ch = dict(channels) if channels else default_channels(channel_multiplier, channel_max)
        self.size, self.channels = size, ch
        log_size = int(math.log2(size))
        convs = [ConvLayer(3, ch[size], 1)]
        in_ch = ch[size]
        for i in range(log_size, 2, -1):
            out_ch = ch[2 ** (i - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_kernel))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.stddev_group, self.stddev_feat = 4, 1
        self.final_conv = ConvLayer(in_ch + 1, ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
                                          EqualLinear(ch[4], 1))

    def forward(self, x):
        out = self.convs(x)
        b, c, h, w = out.shape
        group = max(g for g in range(1, min(b, self.stddev_group) + 1) if b % g == 0)
        sd = out.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        sd = torch.sqrt(sd.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        sd = sd.repeat(group, 1, h, w)
        out = self.final_conv(torch.cat([out, sd], 1))
        return self.final_linear(out.view(b, -1))
