"""Feature trunks shared by the encoders (e4e §4, Tov et al. 2021; pSp, Richardson et al. 2021;
ReStyle, Alaluf et al. 2021) and the ArcFace identity network.

* IR-SE-50 (ArcFace, Deng et al. 2019) with the exact key layout of ``model_ir_se50.pth``
  (TreB1eN/InsightFace_Pytorch, the file pSp and e4e initialise from and use for the ID loss):
  ``input_layer.{0 conv3x3 no bias, 1 BN, 2 PReLU}``, ``body.0..23`` bottlenecks with
  ``res_layer.{0 BN, 1 conv3x3, 2 PReLU, 3 conv3x3 (stride), 4 BN, 5 SE(fc1, fc2)}`` and a
  ``shortcut_layer`` (MaxPool(1, stride) when in == out, else ``{0 conv1x1, 1 BN}``), and for the
  recognition net ``output_layer.{0 BN2d, 1 Dropout, 2 Flatten, 3 Linear(512*7*7, 512), 4 BN1d}``.
* ResNet-34 with torchvision key names (``conv1``, ``bn1``, ``layer1..4`` of ``BasicBlock``s with
  ``conv1/bn1/conv2/bn2/downsample``), for 3 or 6 input channels; ReStyle's encoders flatten
  ``layer1..4`` into ``body.0..15`` and use a PReLU ``relu`` after ``bn1`` (see ``RESNET_TO_BODY``).

``width`` scales every channel count and ``units`` the blocks per stage, so tests and CPU training
at 32-64 px can use a small trunk; the defaults are the official architectures.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

IRSE_DEPTHS = (64, 128, 256, 512)
IRSE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
RESNET34_UNITS = (3, 4, 6, 3)
SMALL = {"width": 0.125, "units": (1, 1, 1, 1)}  # the `small` preset of the encoders

# torchvision ``layerX.Y`` -> ReStyle's flattened ``body.N`` (official utils/model_utils.py mapping).
RESNET_TO_BODY = {f"layer{s + 1}.{b}": f"body.{sum(RESNET34_UNITS[:s]) + b}"
                  for s in range(4) for b in range(RESNET34_UNITS[s])}


def scaled(channels, width: float) -> tuple[int, ...]:
    """Channel counts multiplied by ``width`` (at least 4 so the SE bottleneck keeps one channel)."""
    return tuple(max(4, int(round(c * width))) for c in channels)


# ---------------------------------------------------------------------------------------------
# IR-SE blocks
# ---------------------------------------------------------------------------------------------
class SEModule(nn.Module):
    """Squeeze-and-excitation with 1x1 convs ``fc1``/``fc2`` (no bias), reduction 16."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, max(1, channels // reduction), 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(max(1, channels // reduction), channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIR(nn.Module):
    """Improved-residual bottleneck (``bottleneck_IR`` / ``bottleneck_IR_SE`` with ``se=True``)."""

    def __init__(self, in_ch: int, depth: int, stride: int, se: bool = True):
        super().__init__()
        if in_ch == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
                  nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        if se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def irse_blocks(units, depths, se: bool = True) -> list[nn.Module]:
    """Stages of ``units[i]`` bottlenecks; the first block of every stage has stride 2."""
    blocks, in_ch = [], depths[0]
    for n, depth in zip(units, depths):
        for b in range(n):
            blocks.append(BottleneckIR(in_ch, depth, 2 if b == 0 else 1, se=se))
            in_ch = depth
    return blocks


class BasicBlock(nn.Module):
    """torchvision ResNet BasicBlock (same attribute names, so torchvision weights load)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def resnet_layers(units, depths) -> list[nn.Sequential]:
    layers, in_ch = [], depths[0]
    for s, (n, depth) in enumerate(zip(units, depths)):
        stride = 1 if s == 0 else 2
        layers.append(nn.Sequential(*[BasicBlock(in_ch if b == 0 else depth, depth, stride if b == 0 else 1)
                                      for b in range(n)]))
        in_ch = depth
    return layers


# ---------------------------------------------------------------------------------------------
# Trunk mixin: the encoders hold ``input_layer``/``body`` (IR-SE) or ``conv1``/``bn1``/``relu``/``body``
# (ReStyle ResNet-34) as direct children, exactly as the official state dicts name them.
# ---------------------------------------------------------------------------------------------
def _build_irse(module, input_nc, width, units, se):
    depths = scaled(IRSE_DEPTHS, width)
    module.input_layer = nn.Sequential(nn.Conv2d(input_nc, depths[0], 3, 1, 1, bias=False),
                                       nn.BatchNorm2d(depths[0]), nn.PReLU(depths[0]))
    module.body = nn.Sequential(*irse_blocks(units, depths, se))
    return ("input_layer",), depths


def _build_resnet(module, input_nc, width, units, se):
    depths = scaled(IRSE_DEPTHS, width)
    module.conv1 = nn.Conv2d(input_nc, depths[0], 7, 2, 3, bias=False)
    module.bn1 = nn.BatchNorm2d(depths[0])
    module.relu = nn.PReLU(depths[0])
    module.body = nn.Sequential(*[blk for layer in resnet_layers(units, depths) for blk in layer])
    return ("conv1", "bn1", "relu"), depths


TRUNKS = {  # name -> (builder, default units, squeeze-excitation)
    "ir_se50": (_build_irse, IRSE_UNITS[50], True),
    "ir50": (_build_irse, IRSE_UNITS[50], False),
    "resnet34": (_build_resnet, RESNET34_UNITS, False),
}


class TrunkMixin:
    """Adds a trunk to an ``nn.Module`` and returns the four stage outputs (c0, c1, c2, c3).

    For a 256 px input: IR-SE-50 gives 128/64/32/16 px maps with 64/128/256/512 channels; ReStyle's
    ResNet-34 (stride-2 stem, no max-pool) gives the same sizes. Official taps: c1 = body[6],
    c2 = body[20] (ResNet: body[12]), c3 = body[23] (ResNet: body[15]).
    """

    def _build_trunk(self, backbone: str = "ir_se50", input_nc: int = 3, width: float = 1.0, units=None):
        try:
            builder, default_units, se = TRUNKS[backbone]
        except KeyError:
            raise ValueError(f"unknown backbone {backbone!r}; known: {sorted(TRUNKS)}") from None
        units = tuple(units or default_units)
        if len(units) != 4 or min(units) < 1:
            raise ValueError(f"units must be 4 positive block counts, got {units}")
        self._stem, self.stage_channels = builder(self, input_nc, width, units, se)
        ends, total = [], 0
        for n in units:
            total += n
            ends.append(total - 1)
        self.stage_ends = tuple(ends)

    def trunk_modules(self) -> tuple[str, ...]:
        """Names of the trunk's child modules (the stem, then ``body``): the keys a trunk file holds."""
        return (*self._stem, "body")

    def trunk_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        for name in self._stem:
            x = getattr(self, name)(x)
        feats = []
        for i, block in enumerate(self.body):
            x = block(x)
            if i in self.stage_ends:
                feats.append(x)
        return feats


# ---------------------------------------------------------------------------------------------
# ArcFace recognition network (model_ir_se50.pth)
# ---------------------------------------------------------------------------------------------
class Backbone(TrunkMixin, nn.Module):
    """IR / IR-SE ArcFace network; ``forward`` takes 112x112 (or 224) faces in [-1, 1] and returns
    L2-normalised 512-d embeddings. Signature follows the official ``Backbone``."""

    def __init__(self, input_size: int = 112, num_layers: int = 50, mode: str = "ir_se", drop_ratio: float = 0.4,
                 affine: bool = True, width: float = 1.0):
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError("input_size should be 112 or 224")
        if num_layers not in IRSE_UNITS or mode not in ("ir", "ir_se"):
            raise ValueError(f"num_layers must be one of {sorted(IRSE_UNITS)} and mode 'ir' or 'ir_se'")
        self._build_trunk("ir_se50" if mode == "ir_se" else "ir50", 3, width, IRSE_UNITS[num_layers])
        c, s = self.stage_channels[-1], input_size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(c), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(c * s * s, 512), nn.BatchNorm1d(512, affine=affine))

    def forward(self, x):
        x = self.trunk_features(x)[-1]
        return F.normalize(self.output_layer(x), dim=1)


class ResNet34Trunk(nn.Module):
    """torchvision-named ResNet-34 trunk (``conv1``, ``bn1``, ``layer1..4``; no ``fc``) for 3 or 6
    input channels; ``forward`` returns the four stage outputs."""

    def __init__(self, input_nc: int = 3, width: float = 1.0, units=RESNET34_UNITS, maxpool: bool = True):
        super().__init__()
        depths = scaled(IRSE_DEPTHS, width)
        self.conv1 = nn.Conv2d(input_nc, depths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(depths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet_layers(units, depths)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


def torchvision_to_restyle(state_dict: dict, input_nc: int = 3, generator: torch.Generator | None = None) -> dict:
    """torchvision ResNet-34 weights -> ReStyle encoder trunk keys (``layerX.Y`` -> ``body.N``; ``fc``
    dropped). Extra input channels (6-channel ReStyle) are filled with seeded N(0, 1) as officially."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("fc."):
            continue
        for src, dst in RESNET_TO_BODY.items():
            if k.startswith(src + "."):
                k = dst + k[len(src):]
                break
        out[k] = v
    w = out.get("conv1.weight")
    if w is not None and input_nc != w.shape[1]:
        out["conv1.weight"] = expand_input_channels(w, input_nc, generator)
    return out


def expand_input_channels(weight: torch.Tensor, input_nc: int, generator: torch.Generator | None = None):
    """First-conv weight for ``input_nc`` channels: pretrained RGB filters first, N(0,1) for the rest
    (official pSp/ReStyle transfer of ir_se50 / resnet34 weights to 6-channel inputs)."""
    if input_nc <= weight.shape[1]:
        return weight[:, :input_nc].clone()
    extra = torch.randn(weight.shape[0], input_nc - weight.shape[1], *weight.shape[2:], generator=generator)
    return torch.cat([weight, extra.to(weight)], 1)
