"""Image encoders into StyleGAN's W / W+ (state-dict compatible with the official releases).

* ``Encoder4Editing`` — e4e (Tov et al. 2021, §4 and Fig. 3): one code w0 from the coarsest map
  (c3, 16x16 for a 256 px input) repeated over all ``n_latent`` rows, plus offsets Δ_i for rows
  1..N-1 read from c3 (coarse), p2 (middle) and p1 (fine) of a feature pyramid. Offsets are
  switched on progressively (``progressive_stage`` k activates rows 1..k; 'inference' = all).
* ``GradualStyleEncoder`` — pSp (Richardson et al. 2021): every row from its own map2style block;
  coarse rows 0-2 from c3, middle rows 3-6 from p2, fine rows 7+ from p1 (official fixed split
  ``coarse_ind=3``, ``middle_ind=7`` for every ``n_latent``).
* ``SingleWEncoder`` — pSp's ``BackboneEncoderUsingLastLayerIntoW``: pooled c3 -> one w, repeated
  (the paper's W-encoder baseline, §5).
* ``BackboneEncoder`` / ``ProgressiveBackboneEncoder`` — ReStyle (Alaluf et al. 2021) encoders for
  6-channel inputs (image + current reconstruction), every row from the final 16x16 map; the latter
  with e4e's w0 + progressive offsets.

Key names equal the official ones (``input_layer``, ``body``, ``styles.i.convs``, ``styles.i.linear``,
``latlayer1/2``, ``output_pool``/``linear``; ResNet-34: ``conv1``, ``bn1``, ``relu``, ``body``) so
official ``.pt`` files load with ``strict=True``. ``width``/``units``/``block_ch``/``small`` shrink
the networks for tests and CPU runs; the defaults are the official architectures. The inverters
registered here ('e4e', 'psp', 'w_encoder') return ``encoder(x) + latent_avg`` (docs/design.md §2).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from e4e.models.backbones import SMALL, TrunkMixin
from e4e.models.stylegan2 import EqualLinear

COARSE_IND, MIDDLE_IND = 3, 7  # official pSp/e4e row split


def _max_side(size) -> int:
    return max(size) if isinstance(size, (tuple, list)) else int(size)


class GradualStyleBlock(nn.Module):
    """map2style: log2(spatial) stride-2 3x3 convs with LeakyReLU(0.01), then EqualLinear.
    ``style_dim`` defaults to ``out_c`` (official: 512 -> 512)."""

    def __init__(self, in_c: int, out_c: int, spatial: int, style_dim: int | None = None):
        super().__init__()
        self.out_c = out_c
        n = max(1, int(math.log2(spatial)))
        layers = []
        for i in range(n):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, style_dim or out_c, lr_mul=1)

    def forward(self, x):
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"map2style block reduced its input to {tuple(x.shape[-2:])} instead of 1x1: the "
                             "encoder was built for another input size (see the encoder's input_size)")
        return self.linear(x.flatten(1))


class EncoderBase(TrunkMixin, nn.Module):
    """Common constructor: trunk + bookkeeping. ``config()`` returns the keyword arguments that
    rebuild the same architecture (stored in this project's checkpoints)."""

    def __init__(self, n_latent: int, style_dim: int = 512, input_nc: int = 3, backbone: str = "ir_se50",
                 width: float = 1.0, units=None, block_ch: int | None = None, input_size=256, small: bool = False):
        super().__init__()
        if small:
            width, units = SMALL["width"], units or SMALL["units"]
        self._config = dict(n_latent=n_latent, style_dim=style_dim, input_nc=input_nc, backbone=backbone,
                            width=width, units=list(units) if units else None, block_ch=block_ch,
                            input_size=list(input_size) if isinstance(input_size, (tuple, list)) else input_size)
        self._build_trunk(backbone, input_nc, width, units)
        self.n_latent = self.style_count = n_latent
        self.style_dim = style_dim
        self.block_ch = block_ch or self.stage_channels[-1]
        self.c3_spatial = max(1, _max_side(input_size) // 16)

    def config(self) -> dict:
        return dict(self._config)


class _Pyramid(EncoderBase):
    """pSp / e4e feature pyramid: styles with per-row spatial size, lateral 1x1 convs."""

    def __init__(self, n_latent: int, **kw):
        super().__init__(n_latent, **kw)
        c1, c2, c3 = self.stage_channels[1:]
        s = self.c3_spatial
        spatial = [s if i < COARSE_IND else 2 * s if i < MIDDLE_IND else 4 * s for i in range(n_latent)]
        self.styles = nn.ModuleList(GradualStyleBlock(c3, self.block_ch, sp, self.style_dim) for sp in spatial)
        self.latlayer1 = nn.Conv2d(c2, c3, 1)
        self.latlayer2 = nn.Conv2d(c1, c3, 1)

    @staticmethod
    def _upsample_add(x, y):
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y

    def level_features(self, x, last_row: int):
        """Features for rows 0..last_row: (c3, p2 or None, p1 or None), computing only what is needed."""
        _, c1, c2, c3 = self.trunk_features(x)
        p2 = self._upsample_add(c3, self.latlayer1(c2)) if last_row >= COARSE_IND else None
        p1 = self._upsample_add(p2, self.latlayer2(c1)) if last_row >= MIDDLE_IND else None
        return c3, p2, p1

    @staticmethod
    def row_source(i: int, c3, p2, p1):
        return c3 if i < COARSE_IND else p2 if i < MIDDLE_IND else p1


class _Progressive:
    """e4e progressive training: stage k (0..n_latent-1) learns offsets for rows 1..k; 'inference'
    (the default) uses every row. Stored as ``progressive_stage``."""

    progressive_stage: int | str = "inference"

    def set_progressive_stage(self, stage) -> None:
        if stage != "inference" and not (isinstance(stage, int) and stage >= 0):
            raise ValueError(f"progressive stage must be an int >= 0 or 'inference', got {stage!r}")
        self.progressive_stage = stage

    @property
    def last_active_row(self) -> int:
        s = self.progressive_stage
        return self.n_latent - 1 if s == "inference" else min(int(s), self.n_latent - 1)

    def get_deltas_starting_dimensions(self) -> list[int]:
        return list(range(self.n_latent))


class Encoder4Editing(_Progressive, _Pyramid):
    """e4e: [B, n_latent, D] = w0 repeated + offsets of the active rows (others exactly w0)."""

    def forward(self, x):
        last = self.last_active_row
        feats = self.level_features(x, last)
        w0 = self.styles[0](feats[0])
        rows = [w0] + [w0 + self.styles[i](self.row_source(i, *feats)) for i in range(1, last + 1)]
        rows += [w0] * (self.n_latent - last - 1)
        return torch.stack(rows, 1)


class GradualStyleEncoder(_Pyramid):
    """pSp: every row from its own map2style block."""

    def forward(self, x):
        feats = self.level_features(x, self.n_latent - 1)
        return torch.stack([self.styles[i](self.row_source(i, *feats)) for i in range(self.n_latent)], 1)


class SingleWEncoder(EncoderBase):
    """pSp ``BackboneEncoderUsingLastLayerIntoW``: global-average-pooled c3 -> EqualLinear -> one w,
    repeated over the ``n_latent`` rows."""

    def __init__(self, n_latent: int, **kw):
        super().__init__(n_latent, **kw)
        self.output_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = EqualLinear(self.stage_channels[-1], self.style_dim, lr_mul=1)

    def forward(self, x):
        w = self.linear(self.output_pool(self.trunk_features(x)[-1]).flatten(1))
        return w.unsqueeze(1).expand(-1, self.n_latent, -1)


class BackboneEncoder(EncoderBase):
    """ReStyle-pSp: every row from the final 16x16 map (input_nc 6 = image + current output)."""

    def __init__(self, n_latent: int, input_nc: int = 6, **kw):
        super().__init__(n_latent, input_nc=input_nc, **kw)
        c3 = self.stage_channels[-1]
        self.styles = nn.ModuleList(GradualStyleBlock(c3, self.block_ch, self.c3_spatial, self.style_dim)
                                    for _ in range(n_latent))

    def forward(self, x):
        c3 = self.trunk_features(x)[-1]
        return torch.stack([s(c3) for s in self.styles], 1)


class ProgressiveBackboneEncoder(_Progressive, BackboneEncoder):
    """ReStyle-e4e: w0 + progressive offsets, all from the final map."""

    def forward(self, x):
        c3 = self.trunk_features(x)[-1]
        last = self.last_active_row
        w0 = self.styles[0](c3)
        rows = [w0] + [w0 + self.styles[i](c3) for i in range(1, last + 1)] + [w0] * (self.n_latent - last - 1)
        return torch.stack(rows, 1)


ENCODERS = {"e4e": Encoder4Editing, "psp": GradualStyleEncoder, "w_encoder": SingleWEncoder,
            "restyle_psp": BackboneEncoder, "restyle_e4e": ProgressiveBackboneEncoder}


def build_encoder(method: str, **kwargs) -> nn.Module:
    try:
        cls = ENCODERS[method]
    except KeyError:
        raise KeyError(f"no encoder for method {method!r}; known: {sorted(ENCODERS)}") from None
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# input preparation
# ---------------------------------------------------------------------------------------------
def as_hw(size) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def fit_to_input(images: torch.Tensor, size) -> torch.Tensor:
    """Resize [B,C,H,W] to the encoder input ``size`` (int or (h, w)).

    Non-square targets follow the official cars convention: a square image (e.g. a 512x512 car
    generator output, content in rows 64:448) is first cropped to the centre rows of the target
    aspect (rows H/8..7H/8 for 192x256). Integer down-scaling uses area averaging (the official
    ``AdaptiveAvgPool2d`` face pool); other factors antialiased bilinear.
    """
    h, w = as_hw(size)
    H, W = images.shape[-2:]
    if (H, W) == (h, w):
        return images
    if H == W and h < w:
        keep = round(H * h / w)
        top = (H - keep) // 2
        images = images[..., top:top + keep, :]
        H = keep
    if H % h == 0 and W % w == 0 and H // h == W // w:
        return F.adaptive_avg_pool2d(images, (h, w))
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=H > h or W > w)


def default_input_size(generator) -> int:
    """256 px as in the official encoders, or the generator size when it is smaller (synth)."""
    return min(256, generator.size)
