"""Attribute network for the synth domain: a small CNN regressing every renderer attribute.

Its penultimate features stand in for ArcFace/MoCo (``id_domain``) and Inception (``fid_domain``)
on this domain; its head measures attributes (``edit_<attr>``, InterFaceGAN labels).

Architecture (64x64 input in [-1, 1]): a 4x4 stride-2 stem (32 px, 32 channels), then 3x3 convs
at 16, 8 and 4 px (48, 96, 128 channels; GroupNorm + LeakyReLU), flatten (2048), a linear
layer to 256 features (``features``), LeakyReLU, and a linear head to K normalised attributes.
``forward`` de-normalises with the training-set mean/std stored in the module, so predictions are
in the original attribute units (``e4e.synth.render.ATTRIBUTE_SPECS``).

Training: AdamW, cosine learning rate with warm-up, MSE on standardised targets, light augmentation
(Gaussian noise with a random sigma, random Gaussian blur, +-1 px shifts) so that it also reads
GAN samples; the weights with the best val-split MSE are kept; R^2 and MAE per attribute are
reported on the test split.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from e4e.progress import Progress, track
from e4e.tracking import git_sha

from .render import ATTRIBUTES

__all__ = ["AttrNet", "DEFAULT_PATH", "load_attrnet", "train_attrnet", "evaluate_attrnet", "load_split"]

DEFAULT_PATH = Path(__file__).resolve().parent / "assets" / "attrnet.pt"


def _block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.LeakyReLU(0.2))


class AttrNet(nn.Module):
    """Small CNN: ``forward(x) -> [B, K]`` attributes (original units), ``features(x) -> [B, F]``.

    ``x``: float [B, 3, 64, 64] in [-1, 1] (other sizes are resized bilinearly to 64)."""

    ATTRIBUTES: tuple[str, ...] = ATTRIBUTES

    def __init__(self, n_attr: int = len(ATTRIBUTES), feat_dim: int = 256, size: int = 64):
        super().__init__()
        self.size = size
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2),  # 64 -> 32, sees every pixel once
            _block(32, 48, 2), _block(48, 48, 1),  # 16
            _block(48, 96, 2), _block(96, 96, 1),  # 8
            _block(96, 128, 2),  # 4
        )
        self.fc = nn.Linear(128 * (size // 16) ** 2, feat_dim)
        self.head = nn.Linear(feat_dim, n_attr)
        self.register_buffer("mean", torch.zeros(n_attr))
        self.register_buffer("std", torch.ones(n_attr))

    def _prep(self, x):
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 256] (pre-activation, un-normalised; L2-normalise for identity)."""
        return self.fc(self.trunk(self._prep(x)).flatten(1))

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions of the standardised attributes [B, K] (the training target)."""
        return self.head(F.leaky_relu(self.features(x), 0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attribute predictions [B, K] in the original units, columns in ``ATTRIBUTES`` order."""
        return self.forward_normalized(x) * self.std + self.mean


def load_attrnet(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> AttrNet:
    """Load an ``AttrNet`` (default: the committed ``e4e/synth/assets/attrnet.pt``) in eval mode."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"attribute-network weights {path} not found: it is the synth domain's attribute/identity "
            f"network; rebuild it with `python -m experiments.synth train-attrnet --data data/synth --out {path}`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if tuple(ckpt.get("attributes", ())) != ATTRIBUTES:
        raise ValueError(f"{path}: trained for attributes {ckpt.get('attributes')}, renderer has {list(ATTRIBUTES)}")
    net = AttrNet(**ckpt["config"])
    net.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()}, strict=True)
    return net.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- data

def load_split(data_root: str | os.PathLike, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [n, 3, H, W] and attributes float [n, K] of one split of a built data set."""
    from PIL import Image

    from .dataset import read_attributes

    files, values = read_attributes(data_root, split)
    if limit is not None:
        files, values = files[:limit], values[:limit]
    if not files:
        raise ValueError(f"split {split!r} of {data_root} is empty")
    def read(f):
        with Image.open(Path(data_root) / f) as im:
            return np.asarray(im.convert("RGB"))

    imgs = np.stack([read(f) for f in track(files, f"load {split}", unit="img", leave=False,
                                            disable=len(files) < 2000)])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(values)


def _to_float(x_u8: torch.Tensor) -> torch.Tensor:
    return x_u8.float().div_(127.5).sub_(1.0)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Light augmentation: +-1 px shifts, random Gaussian blur (half the batch), Gaussian noise."""
    B = x.shape[0]
    dx, dy = (torch.randint(-1, 2, (2,), generator=g)).tolist()
    if dx or dy:
        x = torch.roll(F.pad(x, (1, 1, 1, 1), mode="replicate"), (dy, dx), (2, 3))[:, :, 1:-1, 1:-1]
    sigma = float(torch.empty(()).uniform_(0.3, 1.0, generator=g))
    k = torch.exp(-torch.arange(-1, 2, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum())
    blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None, :]).expand(3, 1, 3, 3), groups=3)
    pick = (torch.rand(B, 1, 1, 1, generator=g) < 0.5).float()
    x = pick * blur + (1 - pick) * x
    noise_sigma = torch.rand(B, 1, 1, 1, generator=g) * 0.06
    return x + noise_sigma * torch.randn(x.shape, generator=g)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_attrnet(net: AttrNet, images_u8: torch.Tensor, attrs: torch.Tensor, batch: int = 256) -> dict:
    """R^2 and MAE per attribute (original units) and the mean standardised MSE."""
    net.eval()
    dev = next(net.parameters()).device
    pred = torch.cat([net(_to_float(images_u8[i:i + batch].to(dev))).cpu() for i in range(0, len(images_u8), batch)])
    err = pred - attrs
    sst = ((attrs - attrs.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    r2 = 1 - (err ** 2).sum(0) / sst
    mae = err.abs().mean(0)
    mse_norm = float(((err / net.std.cpu()) ** 2).mean())
    return dict(r2={k: round(float(v), 4) for k, v in zip(ATTRIBUTES, r2)},
                mae={k: round(float(v), 4) for k, v in zip(ATTRIBUTES, mae)},
                r2_mean=round(float(r2.mean()), 4), mse_norm=round(mse_norm, 5))


# ----------------------------------------------------------------------------- training

def train_attrnet(data_root: str | os.PathLike, out: str | os.PathLike | None, steps: int = 1500, batch: int = 64,
                  lr: float = 2e-3, seed: int = 0, device: str = "cpu", command: str | None = None,
                  val_every: int = 250, limit: int | None = None, progress: bool = True) -> dict:
    """Train on the train split, select on val, report R^2/MAE per attribute on the test split.

    Saves weights to ``out`` (``None``: do not save) and provenance to ``out`` with ``.json``.
    ``limit`` caps the images per split (tests). Returns the held-out metrics dict."""
    t0 = time.time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_tr, y_tr = load_split(data_root, "train", limit)
    x_va, y_va = load_split(data_root, "val", limit)
    x_te, y_te = load_split(data_root, "test", limit)

    net = AttrNet().to(device)
    net.mean.copy_(y_tr.mean(0))
    net.std.copy_(y_tr.std(0).clamp_min(1e-3))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))

    best, best_state, history = float("inf"), None, []
    first_val = evaluate_attrnet(net, x_va, y_va)["mse_norm"]
    bar = Progress(steps, "train attrnet", unit="step", disable=not progress)
    for step in range(steps):
        bar.update(1)
        net.train()
        idx = torch.randint(0, len(x_tr), (batch,), generator=g)
        x = _augment(_to_float(x_tr[idx]), g).to(device)
        y = ((y_tr[idx] - net.mean.cpu()) / net.std.cpu()).to(device)
        loss = F.mse_loss(net.forward_normalized(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % val_every == 0 or step + 1 == steps:
            val = evaluate_attrnet(net, x_va, y_va)["mse_norm"]
            history.append(dict(step=step + 1, train_loss=round(loss.item(), 5), val_mse_norm=val))
            bar.set_postfix(loss=f"{loss.item():.4f}", val=f"{val:.4f}")
            if val < best:
                best, best_state = val, {k: v.detach().clone() for k, v in net.state_dict().items()}
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    test = evaluate_attrnet(net, x_te, y_te)
    result = dict(test=test, val_mse_norm_initial=first_val, val_mse_norm_best=best, history=history,
                  wall_s=round(time.time() - t0, 1))

    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        config = dict(n_attr=len(ATTRIBUTES), feat_dim=net.fc.out_features, size=net.size)
        torch.save(dict(state_dict={k: v.cpu() for k, v in net.state_dict().items()}, config=config,
                        attributes=list(ATTRIBUTES)), out)
        prov = dict(command=command, data=str(data_root), seed=seed, steps=steps, batch=batch, lr=lr,
                    device=str(device), threads=torch.get_num_threads(), n_train=len(x_tr), n_val=len(x_va),
                    n_test=len(x_te), git_sha=git_sha(), torch=torch.__version__, **result)
        out.with_suffix(".json").write_text(json.dumps(prov, indent=2) + "\n")
    return result
