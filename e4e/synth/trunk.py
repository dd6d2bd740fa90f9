"""A pretrained encoder trunk for the synth domain (the stand-in for the paper's IR-SE-50 init).

e4e, pSp and the W encoder start from an IR-SE-50 trunk pretrained for face recognition
(``model_ir_se50.pth``). On synth there is no such network, so this module pretrains the trunk the
three encoders share (``TrunkMixin``, backbone 'ir_se50', by default the encoders' ``small`` preset
``e4e.models.backbones.SMALL``, 3 input channels) to regress the renderer's 11 ground-truth
attributes:

- ``TrunkRegressor``: the trunk + a linear head on the global-average-pooled c2 and c3 maps,
  predicting the attributes standardised with the attribute network's stored mean / std.
- Data: every step renders ``fresh`` new faces (``render.sample_attributes`` + ``render``) into a
  pool of recent renders and draws the batch from the pool (``fresh`` = ``batch``: every image is
  used once). Each render call draws a realism gap G ~ U(0, ``gap_max``) (``render(..., gap=G)``
  with ``stretch_attributes``, the "real" images of the synth domain), so the trunk reads clean and
  "real" faces; ``gap_max`` = 0 trains on clean renders only.
- AdamW, cosine learning rate with warm-up, MSE; R^2 per attribute on freshly rendered held-out
  faces (a seed stream of their own), clean and at gap 1.

The file written (``e4e.checkpoints.save_trunk``, format ``e4e-lab-trunk``) holds only the trunk's
``input_layer.*`` / ``body.*`` tensors, the architecture and the provenance, and loads with
``torch.load(weights_only=True)``; the config key ``model.trunk_init`` copies it into an encoder.
Rebuild the committed one with ``python -m experiments.synth pretrain-trunk``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from e4e.progress import track

from e4e.models.backbones import SMALL, TRUNKS, TrunkMixin

from .attrnet import _to_float, evaluate_attrnet, load_attrnet
from .render import ATTRIBUTES, render, sample_attributes, stretch_attributes

__all__ = ["DEFAULT_PATH", "TrunkRegressor", "RenderPool", "pretrain_trunk", "add_cli"]

DEFAULT_PATH = Path(__file__).resolve().parent / "assets" / "encoder_trunk_synth64.pt"


class TrunkRegressor(TrunkMixin, nn.Module):
    """Encoder trunk + linear head on pooled c2/c3: ``forward(x) -> [B, K]`` attributes in the
    renderer's units (``forward_normalized``: standardised). ``x`` in [-1, 1], 3 channels."""

    def __init__(self, backbone: str = "ir_se50", width: float = SMALL["width"], units=SMALL["units"],
                 n_attr: int = len(ATTRIBUTES)):
        super().__init__()
        self._config = dict(backbone=backbone, width=float(width), units=list(units), input_nc=3)
        self._build_trunk(backbone, 3, width, units)
        self.head = nn.Linear(sum(self.stage_channels[2:]), n_attr)
        self.register_buffer("mean", torch.zeros(n_attr))
        self.register_buffer("std", torch.ones(n_attr))

    def config(self) -> dict:
        """Trunk constructor arguments, the same keys as ``EncoderBase.config()``."""
        return dict(self._config)

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        c2, c3 = self.trunk_features(x)[2:]
        return self.head(torch.cat([c2.mean((2, 3)), c3.mean((2, 3))], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(x) * self.std + self.mean


def render_batch(rng: np.random.Generator, n: int, size: int, gap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fresh faces with realism gap ``gap``: uint8 images [n, 3, size, size] and the attributes
    they were rendered with [n, K]."""
    seeds = rng.integers(2 ** 63, size=n).tolist()
    attrs = stretch_attributes(sample_attributes(n, rng), gap, seeds)
    images = torch.from_numpy(render(attrs, size=size, gap=gap, seeds=seeds)).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(attrs)


class RenderPool:
    """Batches of ``batch`` faces: each call renders ``fresh`` new ones (realism gap ~ U(0, gap_max))
    into a pool of the ``16 * batch`` most recent renders and draws the batch from it, so every image
    is drawn about batch / fresh times. ``fresh >= batch``: every batch is new renders only."""

    def __init__(self, rng: np.random.Generator, size: int, batch: int, fresh: int, gap_max: float = 0.0):
        self.rng, self.size, self.n, self.fresh, self.gap_max = rng, size, batch, min(fresh, batch), gap_max
        self.capacity = batch if self.fresh == batch else 16 * batch
        self.images = torch.empty(0, 3, size, size, dtype=torch.uint8)
        self.attrs = torch.empty(0, len(ATTRIBUTES))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        gap = float(self.rng.uniform(0, self.gap_max))
        x, y = render_batch(self.rng, max(self.fresh, self.n - len(self.images)), self.size, gap)  # 1st: all new
        self.images = torch.cat([self.images, x])[-self.capacity:]
        self.attrs = torch.cat([self.attrs, y])[-self.capacity:]
        idx = torch.from_numpy(self.rng.choice(len(self.images), self.n, replace=False))
        return self.images[idx], self.attrs[idx]


def _cosine(opt, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


def _train_step(net: TrunkRegressor, opt, sched, x_u8: torch.Tensor, y: torch.Tensor) -> float:
    net.train()
    loss = F.mse_loss(net.forward_normalized(_to_float(x_u8)), (y - net.mean) / net.std)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def pretrain_trunk(out, steps: int = 500, batch: int = 64, fresh: int = 16, gap_max: float = 1.0, lr: float = 2e-3,
                   seed: int = 0, size: int = 64, backbone: str = "ir_se50", width: float = SMALL["width"],
                   units=SMALL["units"], n_test: int = 1000, log_every: int = 50, command: str | None = None,
                   progress: bool = True) -> dict:
    """Pretrain a ``TrunkRegressor`` on fresh renders; write its trunk to ``out`` (None: do not
    save) and the provenance to ``out`` with ``.json``. Returns the provenance dict (``test`` /
    ``test_gap1``: R^2 / MAE per attribute and ``mse_norm`` on ``n_test`` held-out clean / gap-1
    renders; ``mse_norm_initial``: the clean one before training)."""
    t0 = time.time()
    torch.manual_seed(seed)
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    net = TrunkRegressor(backbone, width, units)
    ref = load_attrnet()
    net.mean.copy_(ref.mean)
    net.std.copy_(ref.std)
    clean, real = render_batch(test_rng, n_test, size), render_batch(test_rng, n_test, size, gap=1.0)
    initial = evaluate_attrnet(net, *clean)["mse_norm"]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = _cosine(opt, steps)
    pool = RenderPool(train_rng, size, batch, fresh, gap_max)
    history = []
    for step in track(range(steps), "pretrain trunk", disable=not progress):
        loss = _train_step(net, opt, sched, *pool.next())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append(dict(step=step + 1, train_loss=round(loss, 5)))
    prov = dict(command=command, seed=seed, steps=steps, batch=batch, fresh=pool.fresh, gap_max=gap_max, lr=lr,
                threads=torch.get_num_threads(), arch=dict(net.config(), input_size=size), n_test=n_test,
                mse_norm_initial=initial, test=evaluate_attrnet(net, *clean), test_gap1=evaluate_attrnet(net, *real),
                history=history, wall_s=round(time.time() - t0, 1))
    if out is not None:
        _save(net, Path(out), prov)
    return prov


def _save(net: TrunkRegressor, out: Path, prov: dict) -> None:
    from e4e.checkpoints import save_trunk
    from e4e.tracking import git_sha

    prov["git_sha"] = git_sha()
    prov["torch"] = str(torch.__version__)
    save_trunk(net, out, prov["arch"], extra=dict(attributes=list(ATTRIBUTES), provenance=prov))
    out.with_suffix(".json").write_text(json.dumps(prov, indent=2) + "\n")


# ----------------------------------------------------------------------------- CLI

def add_cli(sub) -> None:
    """Register ``pretrain-trunk`` on the ``python -m experiments.synth`` subparsers."""
    import argparse

    p = sub.add_parser("pretrain-trunk", help="pretrain the encoders' trunk on fresh renders (model.trunk_init=synth)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="e4e/synth/assets/encoder_trunk_synth64.pt",
                   help="trunk file; provenance goes beside it (.json)")
    p.add_argument("--steps", type=int, default=500, help="optimisation steps")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--fresh", type=int, default=16, help="new renders per step (the rest of the batch is "
                                                         "drawn from the pool of recent renders)")
    p.add_argument("--gap-max", type=float, default=1.0,
                   help="realism gap of each render call ~ U(0, gap-max); 0 = clean renders only")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, cosine decay)")
    p.add_argument("--seed", type=int, default=0, help="seed (training and held-out renders)")
    p.add_argument("--size", type=int, default=64, help="render size in pixels (the encoders' input size)")
    p.add_argument("--backbone", default="ir_se50", choices=sorted(TRUNKS), help="trunk backbone")
    p.add_argument("--width", type=float, default=SMALL["width"], help="channel multiplier (small preset)")
    p.add_argument("--units", type=int, nargs=4, default=list(SMALL["units"]), help="blocks per stage")
    p.add_argument("--n-test", type=int, default=1000, help="held-out renders for R^2")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> None:
    torch.set_num_threads(args.threads)
    prov = pretrain_trunk(args.out, steps=args.steps, batch=args.batch, fresh=args.fresh, gap_max=args.gap_max,
                          lr=args.lr, seed=args.seed,
                          size=args.size, backbone=args.backbone, width=args.width, units=args.units,
                          n_test=args.n_test, command=" ".join(["python -m experiments.synth", *sys.argv[1:]]))
    print(json.dumps({k: prov[k] for k in ("test", "test_gap1", "mse_norm_initial", "wall_s")}, indent=2))
