"""Supervised distillation of the renderer into the project's StyleGAN2 ``Generator``.

Why: a GAN trained for an hour on 2 CPU cores did not learn to represent the edited attributes
(its samples spread 0.3-0.5x as wide as the renderer's in smile, yaw and eyes_open). The renderer is
a known function of a few factors, so the generator can instead be taught that function directly:

- ``z`` [B, 512] ~ N(0, I). The mapping network sees ``pixel_norm(z)``; its first ``N_NOISE``
  coordinates are turned into attributes by ``attributes_from_noise`` (the inverse-CDF form of
  ``render.sample_attributes``: the same law, but a deterministic function of the noise), and the
  target is ``render(attributes)``. Every step draws fresh pairs; nothing is read from disk.
- The other 500 coordinates carry no information; the generator learns to ignore them.
- Loss = L1(G(z), target), optionally weighted ``1 + region_weight`` inside the eye band and the
  mouth/nose window (``region_weights``: small features carry smile, eyes_open and glasses but few
  pixels), + ``feat_weight`` x MSE of attribute-net features + ``attr_weight`` x MSE of the
  attribute-net head (standardised) against the true attributes. The head term asks directly that
  every attribute be readable from G's images (so the spread of the attribute net's readings on G's
  samples is partly trained for; ``generator_quality`` also reports the pixel error and FID).
- Adam (the mapping network at ``mapping_lr_mult`` x the learning rate: see the config), an EMA copy
  of G (``ema_beta`` per step) which is what gets exported; per-layer noise is random during training
  (the target is deterministic, so the noise strengths learn to go to 0). The learning rate falls
  linearly to 0.1x over the last ``decay_frac`` of the steps.
- A run resumed with other settings records each phase (``phases``: the step it starts at and what
  changed), and the export writes them into the provenance.

Resume: ``out_dir/last.pt`` holds G, G_ema, the optimizer, the step and the config, all loadable
with ``weights_only=True``. Each step's z is drawn from a generator seeded by (seed, step), so a
resumed run continues the same sequence of batches.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from e4e.fileio import quantize_8bit
from e4e.losses import disc_loss, nonsaturating_loss, r1_penalty
from e4e.models.stylegan2 import Generator

from .gan import SYNTH_CHANNELS
from .render import ATTRIBUTES, render

__all__ = ["N_NOISE", "DistillConfig", "attributes_from_noise", "noise_of", "targets", "DistillTrainer",
           "generator_quality", "export", "add_cli"]

N_NOISE = 12  # noise coordinates that sample_attributes consumes


def attributes_from_noise(eps: np.ndarray) -> np.ndarray:
    """Standard-normal noise [n, >=12] -> attributes [n, K] with the law of ``sample_attributes``."""
    from scipy.special import ndtr
    from scipy.stats import beta

    e = np.asarray(eps, np.float64)
    u = ndtr(e[:, :N_NOISE])  # uniforms
    age = beta.ppf(u[:, 0], 1.6, 2.2)
    smile = np.clip(0.15 + 0.5 * e[:, 1], -1, 1)
    eyes_open = np.clip(beta.ppf(u[:, 2], 5.0, 1.4) - 0.25 * age - 0.15 * np.maximum(smile, 0), 0, 1)
    glasses = np.where(u[:, 3] < 0.12 + 0.45 * age, 0.55 + 0.45 * u[:, 4], 0.0)
    hair_length = np.clip(u[:, 5] - 0.3 * age + 0.1, 0, 1)
    cols = dict(yaw=np.clip(0.45 * e[:, 6], -1, 1), smile=smile, age=age, eyes_open=eyes_open, glasses=glasses,
                hair_hue=u[:, 7], hair_length=hair_length, skin_tone=u[:, 8], bg_hue=u[:, 9],
                bg_gradient=2 * u[:, 10] - 1, light=2 * u[:, 11] - 1)
    return np.stack([cols[k] for k in ATTRIBUTES], 1).astype(np.float32)


def noise_of(z: torch.Tensor) -> np.ndarray:
    """The attribute noise of ``z``: the first ``N_NOISE`` coordinates of pixel_norm(z)."""
    zn = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    return zn[:, :N_NOISE].double().cpu().numpy()


def targets(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rendered target images [B,3,64,64] in [-1,1], attributes [B,K]) for latents ``z``."""
    a = attributes_from_noise(noise_of(z))
    img = torch.from_numpy(render(a)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return img, torch.from_numpy(a)


@dataclass
class DistillConfig:
    out_dir: str = "runs/synth_distill"
    size: int = 64
    style_dim: int = 512
    n_mlp: int = 4
    lr_mlp: float = 0.01
    channels: dict = field(default_factory=lambda: dict(SYNTH_CHANNELS))
    steps: int = 20_000
    batch: int = 32
    lr: float = 5e-3
    # The file format fixes the mapping's lr_mul (0.01): a random mapping mixes the 12 informative
    # z coordinates with 500 uninformative ones, and at 0.01x it takes thousands of steps to unmix
    # them. This multiplier on the mapping's learning rate (100 = an effective lr_mul of 1) fixes it.
    mapping_lr_mult: float = 100.0
    beta1: float = 0.9
    beta2: float = 0.99
    feat_weight: float = 0.1
    attr_weight: float = 0.05
    region_weight: float = 0.0      # extra L1 weight on the eye band and the mouth/nose window
    # Sharpening fine-tune (0 = off): L1 of the image's finite differences (edges; region-weighted
    # like the pixels) and a non-saturating patch-discriminator loss (rendered images are "real").
    edge_weight: float = 0.0
    adv_weight: float = 0.0
    d_lr: float = 2e-3
    r1_gamma: float = 1.0
    r1_every: int = 4               # lazy R1: every r1_every steps, scaled by r1_every
    init_from: str = ""             # a rosinality generator file both G and G_ema start from (no last.pt)
    ema_beta: float = 0.998
    decay_frac: float = 0.25        # the learning rate falls linearly to 0.1x over the last quarter
    seed: int = 0
    threads: int = 2
    max_minutes: float = 0.0        # stop cleanly (and save) after this much wall time; 0 = no limit
    ckpt_every_minutes: float = 5.0
    log_every: int = 50

    def __post_init__(self):
        self.channels = {int(k): int(v) for k, v in dict(self.channels).items()}
        for f in ("lr", "mapping_lr_mult", "feat_weight", "attr_weight", "region_weight", "ema_beta", "decay_frac",
                  "edge_weight", "adv_weight", "d_lr", "r1_gamma"):
            v = getattr(self, f)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{f} must be finite and >= 0, got {v}")
        if self.size != 64:
            raise ValueError("the renderer's attribute network reads 64 px images: size must be 64")
        if self.r1_every < 1:
            raise ValueError(f"r1_every must be >= 1, got {self.r1_every}")

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown distill keys {unknown}; valid: {sorted(names)}")
        return cls(**d)


def region_weights(size: int, extra: float) -> torch.Tensor:
    """[1, 1, size, size] pixel weights (mean 1): 1 + ``extra`` inside the renderer's eye band and
    mouth/nose window (the faces are aligned, so the small features that carry smile, eyes_open and
    glasses sit there whatever the yaw), renormalised to mean 1."""
    from .render import EXTENT

    c = ((torch.arange(size) + 0.5) / size * 2 - 1) * EXTENT
    v, u = c[:, None], c[None, :]
    eyes = (u.abs() <= 0.62) & (v >= -0.3) & (v <= 0.08)
    mouth = (u.abs() <= 0.5) & (v >= -0.05) & (v <= 0.45)
    w = 1 + extra * (eyes | mouth).float()
    return (w / w.mean())[None, None]


class PatchDiscriminator(torch.nn.Module):
    """A small PatchGAN (64 px -> 8x8 logits, receptive field ~30 px): it judges local texture and
    edges, which is what the L1 regression leaves soft, not the global layout (which L1 fixes)."""

    def __init__(self, ch: int = 32):
        super().__init__()
        act = torch.nn.LeakyReLU(0.2)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, ch, 4, 2, 1), act, torch.nn.Conv2d(ch, 2 * ch, 4, 2, 1), act,
            torch.nn.Conv2d(2 * ch, 4 * ch, 4, 2, 1), act, torch.nn.Conv2d(4 * ch, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def image_edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical finite differences of images [B, C, H, W]."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def _build_g(cfg: DistillConfig) -> Generator:
    return Generator(cfg.size, cfg.style_dim, cfg.n_mlp, lr_mlp=cfg.lr_mlp, channels=cfg.channels)


class DistillTrainer:
    """One process. ``attrnet``: the synth attribute network (frozen)."""

    def __init__(self, cfg: DistillConfig, attrnet, resume: bool = True, log=print):
        self.cfg, self.log = cfg, log
        torch.manual_seed(cfg.seed)
        self.g, self.g_ema = _build_g(cfg), _build_g(cfg)
        self.g_ema.load_state_dict(self.g.state_dict())
        self.g_ema.eval().requires_grad_(False)
        self.net = attrnet.eval().requires_grad_(False)
        mapping = list(self.g.style.parameters())
        ids = {id(p) for p in mapping}
        synthesis = [p for p in self.g.parameters() if id(p) not in ids]
        self.opt = torch.optim.Adam([{"params": synthesis, "mult": 1.0},
                                     {"params": mapping, "mult": cfg.mapping_lr_mult}],
                                    lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.pixel_w = region_weights(cfg.size, cfg.region_weight)
        self.d = PatchDiscriminator() if cfg.adv_weight > 0 else None
        self.d_opt = (torch.optim.Adam(self.d.parameters(), lr=cfg.d_lr, betas=(0.0, 0.99))
                      if self.d is not None else None)
        self.step, self.train_seconds = 0, 0.0
        self.out_dir = Path(cfg.out_dir)
        self.history: list[dict] = []
        self.phases: list[dict] = [{"from_step": 0, "config": asdict(cfg)}]
        if resume and (self.out_dir / "last.pt").exists():
            self.load(self.out_dir / "last.pt")
        elif cfg.init_from:
            from e4e.checkpoints import load_generator

            sd = load_generator(cfg.init_from).state_dict()
            self.g.load_state_dict(sd)
            self.g_ema.load_state_dict(sd)
            self.log(f"[distill] G and G_ema initialised from {cfg.init_from}")

    # -- one step ------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(z, per-layer noise maps) of ``step``: a pure function of (seed, step)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        z = torch.randn(self.cfg.batch, self.cfg.style_dim, generator=g)
        noise = [torch.randn(self.cfg.batch, *n.shape[1:], generator=g) for n in self.g.const_noise()]
        return z, noise

    def lr_at(self, step: int) -> float:
        start = self.cfg.steps * (1 - self.cfg.decay_frac)
        frac = min(1.0, max(0.0, (step - start) / max(1.0, self.cfg.steps - start)))
        return self.cfg.lr * (1 - 0.9 * frac)

    def losses(self, z: torch.Tensor, noise: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        target, attrs = targets(z)
        with torch.no_grad():  # the target's features once per batch
            f_t = self.net.features(target)
            a_t = (attrs - self.net.mean) / self.net.std
        x = self.g.synthesis(self.g.mapping(z), noise=noise, noise_mode="random")
        f_x = self.net.features(x)
        a_x = self.net.head(F.leaky_relu(f_x, 0.2))
        err = (x - target).abs()
        out = {"l1": err.mean(), "feat": F.mse_loss(f_x, f_t), "attr": F.mse_loss(a_x, a_t)}
        pix = (err * self.pixel_w).mean() if self.cfg.region_weight > 0 else out["l1"]
        out["total"] = pix + self.cfg.feat_weight * out["feat"] + self.cfg.attr_weight * out["attr"]
        if self.cfg.edge_weight > 0:
            w = self.pixel_w
            (xh, xv), (th, tv) = image_edges(x), image_edges(target)
            out["edge"] = 0.5 * (((xh - th).abs() * w[..., :, 1:]).mean() + ((xv - tv).abs() * w[..., 1:, :]).mean())
            out["total"] = out["total"] + self.cfg.edge_weight * out["edge"]
        if self.d is not None:
            out["g_adv"] = nonsaturating_loss(self.d(x))
            out["total"] = out["total"] + self.cfg.adv_weight * out["g_adv"]
            self._fake, self._real = x.detach(), target
        return out

    def d_step(self) -> dict[str, torch.Tensor]:
        """One discriminator update on the batch the generator step just used."""
        self.d.requires_grad_(True)
        out = {"d": disc_loss(self.d(self._real), self.d(self._fake))}
        loss = out["d"]
        if self.step % self.cfg.r1_every == 0 and self.cfg.r1_gamma > 0:
            out["r1"] = r1_penalty(self.d, self._real)
            loss = loss + 0.5 * self.cfg.r1_gamma * self.cfg.r1_every * out["r1"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite discriminator loss at step {self.step}")
        self.d_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.d_opt.step()
        self.d.requires_grad_(False)
        return out

    def train_step(self) -> dict[str, float]:
        for grp in self.opt.param_groups:
            grp["lr"] = self.lr_at(self.step) * grp["mult"]
        if self.d is not None:
            self.d.requires_grad_(False)
        loss = self.losses(*self.batch(self.step))
        if not torch.isfinite(loss["total"]):
            raise FloatingPointError(f"non-finite loss at step {self.step}: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in loss.items()))
        self.opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        self.opt.step()
        if self.d is not None:
            loss.update(self.d_step())
        with torch.no_grad():
            b = min(self.cfg.ema_beta, (1 + self.step) / (10 + self.step))
            for pe, p in zip(self.g_ema.parameters(), self.g.parameters()):
                pe.lerp_(p, 1 - b)
            for be, bb in zip(self.g_ema.buffers(), self.g.buffers()):
                be.copy_(bb)
        self.step += 1
        return {k: v.item() for k, v in loss.items()}

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {"g": self.g.state_dict(), "g_ema": self.g_ema.state_dict(), "opt": self.opt.state_dict(),
                "step": self.step, "train_seconds": self.train_seconds, "config": asdict(self.cfg),
                "history": self.history, "phases": self.phases,
                **({"d": self.d.state_dict(), "d_opt": self.d_opt.state_dict()} if self.d is not None else {})}

    def save(self) -> Path:
        for t in self.g.state_dict().values():
            if not torch.isfinite(t).all():
                raise FloatingPointError(f"refusing to save a non-finite generator at step {self.step}")
        from e4e.fileio import atomic_torch_save

        return atomic_torch_save(self.state(), self.out_dir / "last.pt")

    def load(self, path: Path) -> None:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        self.g.load_state_dict(ck["g"])
        self.g_ema.load_state_dict(ck["g_ema"])
        self.opt.load_state_dict(ck["opt"])
        if self.d is not None and "d" in ck:  # a run that turns the discriminator on later starts it fresh
            self.d.load_state_dict(ck["d"])
            self.d_opt.load_state_dict(ck["d_opt"])
        self.step, self.train_seconds = int(ck["step"]), float(ck["train_seconds"])
        self.history = list(ck.get("history", []))
        self.phases = list(ck.get("phases", [{"from_step": 0, "config": ck["config"]}]))
        if ck["config"] != asdict(self.cfg):  # a resumed run with other settings: keep the record
            self.phases.append({"from_step": self.step, "config": asdict(self.cfg)})
        self.log(f"[distill] resumed from {path} at step {self.step}")

    def fit(self) -> dict:
        cfg = self.cfg
        last_ckpt = time.time()
        t_start, sec_start = time.time(), self.train_seconds
        acc: dict[str, float] = {}
        cnt: dict[str, int] = {}
        while self.step < cfg.steps:
            t0 = time.time()
            for k, v in self.train_step().items():  # means over the steps of the window that logged k
                acc[k] = acc.get(k, 0.0) + v
                cnt[k] = cnt.get(k, 0) + 1
            self.train_seconds += time.time() - t0
            if self.step % cfg.log_every == 0:
                row = {"step": self.step, "minutes": round(self.train_seconds / 60, 2),
                       **{k: round(v / cnt[k], 5) for k, v in acc.items()}}
                self.history.append(row)
                self.log("[distill] " + json.dumps(row))
                acc, cnt = {}, {}
            out_of_time = cfg.max_minutes > 0 and (self.train_seconds - sec_start) / 60 >= cfg.max_minutes
            if out_of_time or time.time() - last_ckpt >= cfg.ckpt_every_minutes * 60:
                self.save()
                last_ckpt = time.time()
            if out_of_time:
                break
        self.save()
        return {"step": self.step, "train_minutes": round(self.train_seconds / 60, 2),
                "wall_minutes_this_process": round((time.time() - t_start) / 60, 2)}


# ---------------------------------------------------------------------------------------------
# Quality of a generator against the renderer
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def generator_quality(g: Generator, attrnet, n: int = 2000, seed: int = 1, batch: int = 250) -> dict:
    """Measured on ``n`` samples (z seed ``seed``, const noise, 8-bit quantised):

    - ``spread_ratio[attr]``: std of the attribute net's readings on G(z) / on render(attrs(z));
    - ``readout_r2[attr]``: R^2 of the readings on G(z) against the true attributes of z;
    - ``l1``: mean |G(z) - render(attrs(z))| in [-1, 1] units;
    - ``edge_ratio``: mean |finite difference| of G(z) / of its rendered target inside the eye band
      and mouth/nose window (``region_weights``): 1 = as sharp as the renderer, below 1 = blurred;
    - ``fid_domain``: Frechet distance of attribute-net features, G samples vs ``n`` renders of
      fresh attributes; ``fid_domain_floor``: two independent sets of ``n`` renders."""
    from .render import sample_attributes
    from metrics.perception import fid_from_features

    gen = torch.Generator().manual_seed(seed)
    g.eval()
    pg, pr, true, fg, fr, l1 = [], [], [], [], [], []
    mask = region_weights(g.size, 1.0) > 1  # the feature windows
    edge_g = edge_t = 0.0
    for i in range(0, n, batch):
        z = torch.randn(min(batch, n - i), g.style_dim, generator=gen)
        x = quantize_8bit(g.sample(z, noise_mode="const"))
        t, a = targets(z)
        fg.append(attrnet.features(x).double())
        pg.append(attrnet(x))
        pr.append(attrnet(t))
        true.append(a)
        l1.append((x - t).abs().mean((1, 2, 3)))
        for a, b, m in zip(image_edges(x), image_edges(t), (mask[..., :, 1:], mask[..., 1:, :])):
            edge_g += float((a.abs() * m).sum())
            edge_t += float((b.abs() * m).sum())
    rng = np.random.default_rng(seed)
    for _ in range(2):
        imgs = torch.from_numpy(render(sample_attributes(n, rng))).permute(0, 3, 1, 2).float() / 127.5 - 1
        fr.append(torch.cat([attrnet.features(c).double() for c in imgs.split(batch)]))
    pg, pr, true = torch.cat(pg), torch.cat(pr), torch.cat(true)
    resid = ((pg - true) ** 2).mean(0)
    r2 = 1 - resid / true.var(0, unbiased=False).clamp_min(1e-12)
    return {
        "n": n, "seed": seed, "l1": float(torch.cat(l1).mean()), "edge_ratio": round(edge_g / edge_t, 4),
        "spread_ratio": {k: round(float(pg[:, j].std() / pr[:, j].std()), 4) for j, k in enumerate(ATTRIBUTES)},
        "readout_r2": {k: round(float(r2[j]), 4) for j, k in enumerate(ATTRIBUTES)},
        "fid_domain": fid_from_features(torch.cat(fg).numpy(), fr[0].numpy()),
        "fid_domain_floor": fid_from_features(fr[1].numpy(), fr[0].numpy()),
    }


def export(ckpt: str | os.PathLike, out: str | os.PathLike, grid: str | os.PathLike | None = None,
           n_quality: int = 2000, command: str = "", notes: list[str] | None = None) -> dict:
    """G_ema of a distillation checkpoint -> rosinality ``.pt`` (+ ``latent_avg``) and a provenance
    JSON beside it (command, seed, git sha, steps, wall time, quality numbers)."""
    from e4e.checkpoints import save_generator
    from e4e.tracking import git_sha

    from .attrnet import load_attrnet
    from e4e.fileio import save_grid

    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = DistillConfig.from_dict(ck["config"])
    g = _build_g(cfg)
    g.load_state_dict(ck["g_ema"])
    g.eval().requires_grad_(False)
    latent_avg = g.mean_latent(10_000, seed=0)[0]
    out = Path(out)
    # a fine-tune's starting generator: its provenance is read before ``out`` (maybe the same file) is written
    parent = None
    if cfg.init_from:
        pj = Path(cfg.init_from).with_suffix(".json")
        parent = {"file": cfg.init_from, "provenance": json.loads(pj.read_text()) if pj.is_file() else None}
    sha = git_sha()  # before the export changes a tracked file (it would read "-dirty")
    save_generator(g, out, latent_avg=latent_avg)
    info = {"file": out.name, "bytes": out.stat().st_size, "method": "supervised distillation of the renderer "
            "(e4e/synth/distill.py)", "architecture": {"size": cfg.size, "style_dim": cfg.style_dim,
            "n_mlp": cfg.n_mlp, "lr_mlp": cfg.lr_mlp, "channels": {str(k): v for k, v in cfg.channels.items()}},
            "steps": ck["step"], "batch": cfg.batch, "images_seen": ck["step"] * cfg.batch,
            "train_minutes": round(float(ck["train_seconds"]) / 60, 2), "seed": cfg.seed, "git_sha": sha,
            "config": ck["config"], "command": command, "latent_avg": "mean of 10000 w (z seed 0)",
            "export_command": f"python -m experiments.synth export-distilled --ckpt {ckpt} --out {out}",
            "loss_history_tail": ck.get("history", [])[-5:], "notes": notes or [],
            "phases": [{"from_step": p["from_step"], "changed": {k: v for k, v in p["config"].items()
                        if i == 0 or v != ck["phases"][i - 1]["config"].get(k)}}
                       for i, p in enumerate(ck.get("phases", []))]}
    if parent is not None:
        info["initialised_from"] = parent
    if grid:
        z = torch.randn(32, cfg.style_dim, generator=torch.Generator().manual_seed(2021))
        t, _ = targets(z)
        x = g.sample(z, noise_mode="const")
        rows = torch.cat([torch.cat([t[i:i + 8], x[i:i + 8]]) for i in range(0, 32, 8)])
        save_grid(rows, grid, nrow=8, scale=3)
        info["sample_grid"] = f"{grid} (row pairs: rendered target of z | G(z))"
    t0 = time.time()
    info["quality"] = generator_quality(g, load_attrnet(), n=n_quality)
    info["quality_seconds"] = round(time.time() - t0, 1)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _run_train(args) -> None:
    from e4e.config import parse_dotlist

    from .attrnet import load_attrnet

    d = asdict(DistillConfig())
    try:
        d.update(out_dir=args.out, steps=args.steps, max_minutes=args.max_minutes, **parse_dotlist(args.overrides))
        cfg = DistillConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(cfg.threads)
    trainer = DistillTrainer(cfg, load_attrnet(), resume=args.resume)
    try:
        res = trainer.fit()
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(res))


def _run_export(args) -> None:
    torch.set_num_threads(args.threads)
    if not Path(args.ckpt).is_file():
        print(f"error: checkpoint {args.ckpt} not found (train with `python -m experiments.synth distill`)",
              file=sys.stderr)
        raise SystemExit(2)
    info = export(args.ckpt, args.out, grid=args.grid, n_quality=args.n_quality, command=args.command_line,
                  notes=args.note)
    print(json.dumps({"file": info["file"], "steps": info["steps"], "quality": info["quality"]}, indent=1))


def _run_quality(args) -> None:
    from e4e.checkpoints import CheckpointError, load_generator

    from .attrnet import load_attrnet

    torch.set_num_threads(args.threads)
    try:
        g = load_generator(args.generator).eval().requires_grad_(False)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(generator_quality(g, load_attrnet(), n=args.n), indent=1))


def add_cli(sub) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("distill", help="train the synth generator by distillation from the renderer",
                       formatter_class=fmt)
    p.add_argument("--out", default=DistillConfig.out_dir, help="run folder (last.pt)")
    p.add_argument("--steps", type=int, default=DistillConfig.steps, help="total steps")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this much training time")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from <out>/last.pt when present")
    p.add_argument("overrides", nargs="*", help="any DistillConfig key as key=value (e.g. batch=16)")
    p.set_defaults(func=_run_train)
    e = sub.add_parser("export-distilled", help="export G_ema of a distillation run (rosinality .pt + JSON)",
                       formatter_class=fmt)
    e.add_argument("--ckpt", default="runs/synth_distill/last.pt", help="distillation checkpoint")
    e.add_argument("--out", default="e4e/synth/assets/generator_synth64.pt", help="generator file")
    e.add_argument("--grid", default="reports/figures/synth_generator_samples.png", help="sample grid PNG")
    e.add_argument("--n-quality", type=int, default=2000, help="samples for the quality numbers")
    e.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    e.add_argument("--command-line", default="", help="training command recorded in the provenance")
    e.add_argument("--note", action="append", default=[], help="free-text note for the provenance")
    e.set_defaults(func=_run_export)
    q = sub.add_parser("generator-quality", help="spread, readout R^2, L1, edge ratio and FID of a synth generator "
                       "against the renderer", formatter_class=fmt)
    q.add_argument("--generator", default="e4e/synth/assets/generator_synth64.pt", help="generator file")
    q.add_argument("--n", type=int, default=2000, help="samples")
    q.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    q.set_defaults(func=_run_quality)
