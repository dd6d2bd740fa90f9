"""StyleGAN2 GAN trainer for the project's own Generator / Discriminator (e4e.models.stylegan2).

Training recipe (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", 2020, and
the StyleGAN2-ADA conventions for EMA and small resolutions):

- non-saturating logistic loss for G and D;
- lazy R1 on real images every ``r1_every`` D steps, weighted ``r1_gamma / 2 * r1_every``;
- optional lazy path-length regularisation (off by default; ``pl_weight > 0`` turns it on);
- mixing regularisation: with probability ``mixing_prob`` per sample, W+ rows from ``cutoff`` on
  come from a second z (cutoff uniform in [1, n_latent));
- EMA generator with a half-life of ``ema_kimg`` thousand images, ramped up as
  ``min(ema_kimg * 1000, images_seen * ema_rampup)``;
- Adam(lr, betas=(0, 0.99)) with the lazy-regularisation corrections ``lr * c`` and ``beta ** c``,
  ``c = every / (every + 1)``.

Distributed: launched with ``torchrun --nproc_per_node=N`` the trainer joins a process group (gloo on
CPU, nccl on GPU). Every rank holds full copies of G, D and G_ema; gradients are averaged over ranks
with one all-reduce per phase (the scheme StyleGAN2-ADA uses instead of DistributedDataParallel,
because R1 and path-length terms take double backward through D/G, which DDP's reducer does not
support, and because G is run in both phases). One process is the world_size == 1 case of the same
code path. Rank 0 logs to MLflow and writes checkpoints.

Resume: ``out_dir/last.pt`` holds G, D, G_ema, both optimizers, the step, every rank's RNG states
(torch, CUDA, numpy, python), the data-order state, the config and the MLflow run id. A resumed run
continues bit-identically on CPU (tests/test_gan.py) and logs into the same MLflow run, every metric
step exactly once even after a kill -9 between a checkpoint write and the MLflow flush (the buffered
rows travel in the checkpoint: ``e4e.tracking``).

Data: a folder of same-size PNGs (``<data>/train`` if it exists, else ``<data>``) preloaded into a
single uint8 tensor. The data order is a per-epoch permutation derived from (seed, epoch), so the
batch at every step is a pure function of the step, the rank and the world size.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from e4e import checkpoints as CK
from e4e import config as C
from e4e import dist as D
from e4e import losses as L
from e4e import tracking as T
from e4e.cli import Parser, add_tracking_flag, guarded, resolve_device
from e4e.models.stylegan2 import Discriminator, Generator
from e4e.fileio import save_grid

__all__ = ["GANConfig", "GANTrainer", "train", "add_cli", "main", "load_image_folder", "parse_channels"]

SYNTH_CHANNELS = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32}


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
@dataclass
class GANConfig:
    # data / output
    data: str = "data/synth"
    out_dir: str = "runs/synth_gan"
    # architecture
    size: int = 64
    style_dim: int = 512
    n_mlp: int = 4
    lr_mlp: float = 0.01
    channels: dict = field(default_factory=lambda: dict(SYNTH_CHANNELS))
    # optimisation
    steps: int = 100_000            # total steps (a resumed run continues up to this count)
    batch: int = 16                 # per-process batch (the committed model: 2 ranks x 8)
    lr: float = 0.002
    beta1: float = 0.0
    beta2: float = 0.99
    r1_gamma: float = 1.0           # the ADA heuristic (0.0002 * res^2 / batch = 0.05 at 64 px, batch 16)
    #                                 collapsed on synth within 1.5k steps; 1.0 trained the committed model
    r1_every: int = 16
    pl_weight: float = 0.0          # 2.0 in StyleGAN2 config-f; off by default for speed
    pl_every: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    mixing_prob: float = 0.9
    ema_kimg: float = 5.0           # EMA half-life in thousands of images (ADA: batch * 10 / 32)
    ema_rampup: float = 0.05        # None/0 disables the ramp-up
    seed: int = 0
    # run control
    max_minutes: float = 0.0        # stop cleanly (and save) after this much wall time; 0 = no limit
    ckpt_every_minutes: float = 5.0
    ckpt_every: int = 0             # also save every N steps (0 = off)
    log_every: int = 50
    sample_every: int = 500
    n_sample: int = 64
    num_threads: int = 2
    device: str = "auto"            # auto | cpu | cuda
    tracking_uri: str = ""          # '' -> $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db; 'none' disables
    experiment: str = "synth"
    run_name: str = "train-generator"
    progress: bool = True

    # keys that define the model / optimisation and must match on resume
    ARCH_KEYS = ("size", "style_dim", "n_mlp", "lr_mlp", "channels", "batch", "lr", "beta1", "beta2",
                 "r1_gamma", "r1_every", "pl_weight", "pl_every", "mixing_prob", "ema_kimg", "ema_rampup",
                 "seed")

    def __post_init__(self):
        self.channels = parse_channels(self.channels)
        missing = [2 ** i for i in range(2, int(math.log2(self.size)) + 1) if 2 ** i not in self.channels]
        if missing:
            raise ValueError(f"channels lacks resolutions {missing}")
        if self.n_mlp < 1:
            raise ValueError("n_mlp must be >= 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {int(k): int(v) for k, v in self.channels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GANConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GANConfig keys: {sorted(unknown)}")
        return cls(**d)

    def override(self, items: list[str]) -> "GANConfig":
        """Apply ``key=value`` overrides: parsed by the project's one grammar (``e4e.config.parse_dotlist``),
        then coerced to the field's type (``e4e.config.coerce_value``; ``channels`` by ``parse_channels``).
        Unknown keys are rejected (ValueError)."""
        d = self.to_dict()
        hints = typing.get_type_hints(GANConfig)
        names = {f.name for f in dataclasses.fields(self)}
        for k, v in C.parse_dotlist(items).items():
            if k not in names:
                raise ValueError(f"unknown GANConfig key {k!r}")
            if hints[k] is dict:
                d[k] = parse_channels(v)
            else:
                d[k] = C.coerce_value(v, hints[k], k)
        return GANConfig.from_dict(d)


def parse_channels(spec) -> dict[int, int]:
    """``{4: 128, ...}``, ``"4:128,8:128,..."``, a JSON object, or one int (uniform, resolutions 4..1024)."""
    if isinstance(spec, dict):
        return {int(k): int(v) for k, v in spec.items()}
    if isinstance(spec, int):
        return {2 ** i: spec for i in range(2, 11)}
    s = str(spec).strip()
    if s.startswith("{"):
        return parse_channels(json.loads(s))
    if s.isdigit():
        return parse_channels(int(s))
    out = {}
    for part in s.split(","):
        r, c = part.split(":")
        out[int(r)] = int(c)
    return out


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def load_image_folder(path: str | os.PathLike, size: int | None = None, limit: int | None = None,
                      seed: int = 0) -> torch.Tensor:
    """All ``*.png`` (sorted by name) of a folder as one uint8 tensor [N, 3, H, W]; with ``limit``, a
    seeded random subset of that many files (in name order).

    ``path/train`` is used when it exists (the synth data set layout)."""
    from PIL import Image

    root = Path(path)
    if (root / "train").is_dir():
        root = root / "train"
    files = sorted(root.glob("*.png"))
    if limit is not None and limit < len(files):
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        files = [files[i] for i in keep.tolist()]
    if not files:
        raise FileNotFoundError(f"no PNG images in {root} (build them with `python -m experiments.synth build`)")
    first = np.asarray(Image.open(files[0]).convert("RGB"))
    h, w = first.shape[:2]
    if size is not None and (h, w) != (size, size):
        raise ValueError(f"images in {root} are {h}x{w}, expected {size}x{size}")
    out = np.empty((len(files), h, w, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            a = np.asarray(im.convert("RGB"))
        if a.shape != (h, w, 3):
            raise ValueError(f"{f} has shape {a.shape}, expected {(h, w, 3)}")
        out[i] = a
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class _DataOrder:
    """Batch indices as a pure function of (step, rank): per-epoch permutations seeded by (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + 7919 * int(epoch) + 1)
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def indices(self, step: int, batch: int, rank: int, world: int) -> torch.Tensor:
        start = (step * world + rank) * batch
        pos = torch.arange(start, start + batch)
        epochs = pos // self.n
        out = torch.empty(batch, dtype=torch.long)
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self.perm(e)[pos[m] % self.n]
        return out

    def state(self, step: int, batch: int, world: int) -> dict:
        pos = step * world * batch
        return {"seed": self.seed, "n": self.n, "epoch": pos // self.n, "position": pos % self.n}


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
class _RunLog:
    """The GAN trainer's MLflow run (rank 0): opens or resumes it, re-sends the rows of the resumed
    checkpoint that MLflow may lack, flushes the trainer's ``MetricBuffer`` after each checkpoint. A
    tracking hiccup (e.g. a sqlite file locked by another process) never stops training: the rows
    stay buffered and the next flush retries."""

    def __init__(self, trainer: "GANTrainer", uri: str):
        cfg = trainer.cfg
        self.client = T.get_client(uri)
        self.buffer = trainer.metrics
        run_id = trainer.run_id
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
            except Exception:  # noqa: BLE001  (the run was deleted, or the store is a new one)
                run_id = None
        if run_id is None:
            exp_id = T.get_or_create_experiment(self.client, cfg.experiment)
            run_id = self.client.create_run(exp_id, run_name=cfg.run_name).info.run_id
            T.log_params(self.client, run_id, {**cfg.to_dict(), "world_size": trainer.world,
                                               "device": str(trainer.device)})
            T.set_tags(self.client, run_id, {**T.system_tags(trainer.device), "method": "stylegan2-gan",
                                             "domain": "synth"})
        elif trainer.resumed:
            self.client.set_tag(run_id, "resumed_at_step", str(trainer.step))
        if trainer.pending_metrics:
            T.flush_pending(self.client, run_id, trainer.pending_metrics)
        self.run_id = trainer.run_id = run_id

    def flush(self) -> None:
        try:
            self.buffer.flush(self.client, self.run_id)
        except Exception as e:  # noqa: BLE001
            print(f"[gan] MLflow log_batch failed ({e!r}); will retry", file=sys.stderr)

    def artifact(self, path: str | os.PathLike, subdir: str | None = None) -> None:
        try:
            self.client.log_artifact(self.run_id, str(path), subdir)
        except Exception as e:  # noqa: BLE001
            print(f"[gan] MLflow log_artifact failed ({e!r})", file=sys.stderr)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:  # noqa: BLE001
            print(f"[gan] MLflow set_terminated failed ({e!r})", file=sys.stderr)


class GANTrainer:
    """One GAN training process (rank ``rank`` of ``world``). ``images``: uint8 [N,3,H,W] (loaded from
    ``cfg.data`` when None)."""

    def __init__(self, cfg: GANConfig, images: torch.Tensor | None = None, rank: int | None = None,
                 world: int | None = None, resume: bool = True):
        self.cfg = cfg
        dev = resolve_device(cfg.device)
        self.created_group = False
        if rank is None or world is None:
            info = D.setup(dev)
            rank, world, self.created_group = info.rank, info.world, info.owns_group
        self.rank, self.world = rank, world
        if dev.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", rank)) % max(1, torch.cuda.device_count())
            self.device = resolve_device(cfg.device, local)
            torch.cuda.set_device(self.device)
        else:
            self.device = dev
        self.out_dir = Path(cfg.out_dir)
        if rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)

        # seeding (in the entry point, never at import): identical model init on every rank,
        # then per-rank streams for z / noise / mixing.
        torch.manual_seed(cfg.seed)
        self.g = Generator(cfg.size, cfg.style_dim, cfg.n_mlp, lr_mlp=cfg.lr_mlp, channels=cfg.channels).to(self.device)
        self.d = Discriminator(cfg.size, channels=cfg.channels).to(self.device)
        self.g_ema = Generator(cfg.size, cfg.style_dim, cfg.n_mlp, lr_mlp=cfg.lr_mlp, channels=cfg.channels).to(self.device)
        self.g_ema.load_state_dict(self.g.state_dict())
        self.g_ema.eval().requires_grad_(False)
        torch.manual_seed(cfg.seed * 7 + 1000 + rank)
        np.random.seed((cfg.seed * 7 + 1000 + rank) % 2 ** 32)
        random.seed(cfg.seed * 7 + 1000 + rank)

        g_c = cfg.pl_every / (cfg.pl_every + 1) if cfg.pl_weight > 0 else 1.0
        d_c = cfg.r1_every / (cfg.r1_every + 1) if cfg.r1_gamma > 0 else 1.0
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr * g_c,
                                      betas=(float(cfg.beta1 ** g_c), float(cfg.beta2 ** g_c)))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr * d_c,
                                      betas=(float(cfg.beta1 ** d_c), float(cfg.beta2 ** d_c)))
        self.g_params = list(self.g.parameters())
        self.d_params = list(self.d.parameters())
        self.pl_mean = torch.zeros((), device=self.device)
        self.step = 0
        self.train_seconds = 0.0
        self.run_id: str | None = None
        self.pending_metrics: list = []  # rows saved with the resumed checkpoint (maybe not yet in MLflow)
        self.metrics = T.MetricBuffer()

        if images is None:
            images = load_image_folder(cfg.data, cfg.size)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError("images must be uint8 [N,3,H,W]")
        self.images = images
        self.order = _DataOrder(len(images), cfg.seed)
        # fixed latents for sample grids: their own generator, so grids never touch the training RNG
        self.sample_z = torch.randn(cfg.n_sample, cfg.style_dim, generator=torch.Generator().manual_seed(12345))

        self.resumed = False
        if resume and (self.out_dir / "last.pt").exists():
            self.load(self.out_dir / "last.pt")
            self.resumed = True

    # -- batches -------------------------------------------------------------------------------
    def real_batch(self, step: int) -> torch.Tensor:
        idx = self.order.indices(step, self.cfg.batch, self.rank, self.world)
        x = self.images[idx].to(self.device, non_blocking=True)
        return x.float().div_(127.5).sub_(1.0)

    def _mixed_w(self, n: int) -> torch.Tensor:
        """W+ [n, n_latent, D] with per-sample mixing regularisation."""
        cfg, g = self.cfg, self.g
        z = torch.randn(n, cfg.style_dim, device=self.device)
        w = g.mapping(z)
        w_plus = w.unsqueeze(1).repeat(1, g.n_latent, 1)
        if cfg.mixing_prob > 0:
            z2 = torch.randn(n, cfg.style_dim, device=self.device)
            w2 = g.mapping(z2)
            cutoff = torch.randint(1, g.n_latent, (n,), device=self.device)
            use = torch.rand(n, device=self.device) < cfg.mixing_prob
            cutoff = torch.where(use, cutoff, torch.full_like(cutoff, g.n_latent))
            layer = torch.arange(g.n_latent, device=self.device).view(1, -1)
            mask = (layer >= cutoff.view(-1, 1)).unsqueeze(-1)
            w_plus = torch.where(mask, w2.unsqueeze(1), w_plus)
        return w_plus

    def generate(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        w_plus = self._mixed_w(n)
        return self.g.synthesis(w_plus, noise_mode="random"), w_plus

    # -- one step ------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One D step (+ lazy R1) and one G step (+ lazy path length); returns the losses."""
        cfg, step = self.cfg, self.step
        logs: dict[str, float] = {}
        real = self.real_batch(step)

        # ---- D: logistic loss
        self.g.requires_grad_(False)
        self.d.requires_grad_(True)
        with torch.no_grad():
            fake, _ = self.generate(cfg.batch)
        fake_pred = self.d(fake)
        real_pred = self.d(real)
        d_loss = L.disc_loss(real_pred, fake_pred)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        D.allreduce_grads(self.d_params, self.world)
        self.opt_d.step()
        logs["loss_d"] = d_loss.item()
        logs["d_real"] = real_pred.mean().item()
        logs["d_fake"] = fake_pred.mean().item()

        # ---- D: lazy R1
        if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
            r1, pred = L.r1_penalty(self.d, real, with_pred=True)
            self.opt_d.zero_grad(set_to_none=True)
            (cfg.r1_gamma / 2 * r1 * cfg.r1_every + 0 * pred[0, 0]).backward()
            D.allreduce_grads(self.d_params, self.world)
            self.opt_d.step()
            logs["r1"] = r1.item()

        # ---- G: non-saturating loss
        self.g.requires_grad_(True)
        self.d.requires_grad_(False)
        fake, _ = self.generate(cfg.batch)
        g_loss = L.nonsaturating_loss(self.d(fake))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        D.allreduce_grads(self.g_params, self.world)
        self.opt_g.step()
        logs["loss_g"] = g_loss.item()

        # ---- G: lazy path-length regularisation
        if cfg.pl_weight > 0 and step % cfg.pl_every == 0:
            n = max(1, cfg.batch // cfg.pl_batch_shrink)
            fake, w_plus = self.generate(n)
            noise = torch.randn_like(fake) / math.sqrt(fake.shape[2] * fake.shape[3])
            (grad,) = torch.autograd.grad((fake * noise).sum(), w_plus, create_graph=True)
            lengths = grad.pow(2).sum(2).mean(1).sqrt()
            mean_len = D.allreduce_mean(lengths.mean().detach(), self.world)
            pl_mean = self.pl_mean + cfg.pl_decay * (mean_len - self.pl_mean)
            self.pl_mean = pl_mean.detach()
            pl_pen = (lengths - self.pl_mean).pow(2).mean()
            self.opt_g.zero_grad(set_to_none=True)
            (cfg.pl_weight * cfg.pl_every * pl_pen + 0 * fake[0, 0, 0, 0]).backward()
            D.allreduce_grads(self.g_params, self.world)
            self.opt_g.step()
            logs["pl"] = pl_pen.item()
            logs["pl_mean"] = self.pl_mean.item()

        # ---- EMA
        self.step += 1
        self.update_ema()
        return logs

    @torch.no_grad()
    def update_ema(self) -> None:
        cfg = self.cfg
        batch_global = cfg.batch * self.world
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup:
            ema_nimg = min(ema_nimg, self.step * batch_global * cfg.ema_rampup)
        beta = 0.5 ** (batch_global / max(ema_nimg, 1e-8))
        for pe, p in zip(self.g_ema.parameters(), self.g.parameters()):
            pe.copy_(p.lerp(pe, beta))
        for be, b in zip(self.g_ema.buffers(), self.g.buffers()):
            be.copy_(b)

    # -- checkpoints ---------------------------------------------------------------------------
    def _gather_rng(self) -> list[dict]:
        return D.gather_object(CK.rng_state(), self.world)

    def checkpoint(self, rng: list[dict] | None = None) -> dict:
        return {
            "g": self.g.state_dict(), "d": self.d.state_dict(), "g_ema": self.g_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "step": self.step, "pl_mean": self.pl_mean.detach().cpu(),
            "rng": rng if rng is not None else self._gather_rng(), "world_size": self.world,
            "data_order": self.order.state(self.step, self.cfg.batch, self.world),
            "config": self.cfg.to_dict(), "mlflow_run_id": self.run_id,
            "pending_metrics": list(self.metrics.rows),
            "train_seconds": self.train_seconds, "images_seen": self.step * self.cfg.batch * self.world,
            "format": "e4e-lab/gan-trainer/1",
        }

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Collective (all ranks gather RNG states); rank 0 writes atomically."""
        rng = self._gather_rng()
        if self.rank != 0:
            return None
        from e4e.fileio import atomic_torch_save

        return atomic_torch_save(self.checkpoint(rng), Path(path) if path else self.out_dir / "last.pt")

    def load(self, path: str | os.PathLike) -> None:
        ck = CK.load_checkpoint(path, map_location=self.device)
        saved = ck["config"]
        cur = self.cfg.to_dict()
        diff = [k for k in GANConfig.ARCH_KEYS if _norm(saved.get(k)) != _norm(cur.get(k))]
        if diff:
            raise ValueError(f"cannot resume {path}: config differs in {diff} "
                             f"(saved {[saved.get(k) for k in diff]}, now {[cur.get(k) for k in diff]})")
        if ck.get("world_size", 1) != self.world:
            raise ValueError(f"{path} was written by {ck.get('world_size')} processes, now {self.world}")
        self.g.load_state_dict(ck["g"])
        self.d.load_state_dict(ck["d"])
        self.g_ema.load_state_dict(ck["g_ema"])
        self.opt_g.load_state_dict(ck["opt_g"])
        self.opt_d.load_state_dict(ck["opt_d"])
        self.step = int(ck["step"])
        self.pl_mean = ck["pl_mean"].to(self.device)
        self.train_seconds = float(ck.get("train_seconds", 0.0))
        self.run_id = ck.get("mlflow_run_id")
        self.pending_metrics = list(ck.get("pending_metrics", []))
        CK.set_rng_state(ck["rng"][self.rank])

    # -- samples -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, path: str | os.PathLike, n: int | None = None) -> Path:
        z = self.sample_z[: n or self.cfg.n_sample].to(self.device)
        imgs = torch.cat([self.g_ema.sample(c, noise_mode="const") for c in z.split(64)])
        return save_grid(imgs, path, scale=2)

    # -- loop ----------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        tracker = None
        if self.rank == 0 and cfg.tracking_uri != "none":
            tracker = _RunLog(self, cfg.tracking_uri or T.tracking_uri())
        pbar = None
        if self.rank == 0 and cfg.progress:
            from e4e.progress import Progress
            pbar = Progress(cfg.steps, "train gan", unit="step", initial=self.step)
        t_start = time.time()
        t_base = self.train_seconds
        last_ckpt = time.time()
        status = "FINISHED"
        stopped = "steps"
        t_step = time.time()
        acc: dict[str, float] = {}
        cnt: dict[str, int] = {}
        # SIGTERM (e.g. torchrun or a scheduler stopping the job) ends the run cleanly at the next
        # step boundary: checkpoint saved, MLflow flushed, resumable
        term = {"hit": False}
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGTERM, lambda *_: term.__setitem__("hit", True))
        try:
            while self.step < cfg.steps:
                logs = self.train_step()
                self.train_seconds = t_base + (time.time() - t_start)
                step = self.step
                if tracker is not None:
                    for k, v in logs.items():  # means over the logging window
                        acc[k] = acc.get(k, 0.0) + v
                        cnt[k] = cnt.get(k, 0) + 1
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        for k in acc:
                            self.metrics.add(f"gan/{k}", acc[k] / cnt[k], step)
                        acc, cnt = {}, {}
                        now = time.time()
                        self.metrics.add("gan/sec_per_step", (now - t_step) / cfg.log_every, step)
                        self.metrics.add("gan/kimg", step * cfg.batch * self.world / 1000, step)
                        t_step = now
                if pbar is not None:
                    pbar.update(1)
                    if step % 10 == 0:
                        pbar.set_postfix(**{k: f"{v:.3f}" for k, v in logs.items() if k in ("loss_d", "loss_g", "r1")})
                if self.rank == 0 and cfg.sample_every and step % cfg.sample_every == 0:
                    p = self.sample_grid(self.out_dir / "samples" / f"step_{step:07d}.png")
                    if tracker is not None:
                        tracker.artifact(p, "samples")
                # stop / checkpoint decisions are taken on rank 0 and shared, so ranks stay in step
                flags = torch.zeros(2)
                if self.rank == 0:
                    over = (cfg.max_minutes > 0 and (time.time() - t_start) >= cfg.max_minutes * 60) or term["hit"]
                    due = (cfg.ckpt_every and step % cfg.ckpt_every == 0) or \
                          (cfg.ckpt_every_minutes > 0 and time.time() - last_ckpt >= cfg.ckpt_every_minutes * 60)
                    flags = torch.tensor([float(over), float(bool(due))])
                flags = D.broadcast_tensor(flags, self.world, self.device)
                if flags[0] > 0:
                    stopped = "signal" if term["hit"] else "max_minutes"
                    break
                if flags[1] > 0:
                    self.save()
                    if tracker is not None:
                        # the checkpoint holds the buffered rows and they are flushed right after it,
                        # so a kill before the save replays them and one after it re-sends them on
                        # resume (tracking.flush_pending): every step is logged exactly once
                        tracker.flush()
                    last_ckpt = time.time()
        except BaseException:
            status = "KILLED"
            if tracker is not None:
                self.metrics.discard()  # unflushed steps are replayed after resume from the last checkpoint
            raise
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            if pbar is not None:
                pbar.close()
            if status == "FINISHED":
                self.save()
                if self.rank == 0:
                    p = self.sample_grid(self.out_dir / "samples" / f"step_{self.step:07d}.png")
                    if tracker is not None:
                        tracker.artifact(p, "samples")
            if tracker is not None:
                self.metrics.add("gan/train_minutes", self.train_seconds / 60, self.step)
                tracker.finish(status)
        return {"step": self.step, "stopped": stopped, "train_seconds": self.train_seconds,
                "images_seen": self.step * cfg.batch * self.world, "run_id": self.run_id,
                "checkpoint": str(self.out_dir / "last.pt")}


def _norm(v):
    if isinstance(v, dict):
        return {int(k): int(x) for k, x in v.items()}
    if isinstance(v, float) and v.is_integer():
        return v
    return v


def train(cfg: GANConfig, resume: bool = True, images: torch.Tensor | None = None) -> dict:
    """Entry point for one process (or one torchrun rank)."""
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    trainer = GANTrainer(cfg, images=images, resume=resume)
    try:
        return trainer.fit()
    finally:
        D.cleanup(D.DistInfo(trainer.rank, trainer.world, owns_group=trainer.created_group))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _add_train_args(p: argparse.ArgumentParser) -> None:
    d = GANConfig()
    p.add_argument("--data", default=d.data, help="image folder (uses <data>/train when present)")
    p.add_argument("--out", default=d.out_dir, help="run directory (last.pt, samples/)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch, help="per-process batch")
    p.add_argument("--channels", default=None, help="e.g. 4:128,8:128,16:128,32:64,64:32 or one int")
    p.add_argument("--n-mlp", type=int, default=d.n_mlp)
    p.add_argument("--style-dim", type=int, default=d.style_dim)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-minutes", type=float, default=d.max_minutes, help="stop cleanly and save after this")
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from <out>/last.pt when it exists (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false")
    add_tracking_flag(p, "; 'none' disables tracking")
    p.add_argument("overrides", nargs="*", help="any GANConfig key as key=value")


def config_from_args(args: argparse.Namespace) -> GANConfig:
    cfg = GANConfig(data=args.data, out_dir=args.out, steps=args.steps, batch=args.batch, n_mlp=args.n_mlp,
                    style_dim=args.style_dim, size=args.size, seed=args.seed, max_minutes=args.max_minutes,
                    tracking_uri=args.tracking_uri,
                    channels=parse_channels(args.channels) if args.channels else dict(SYNTH_CHANNELS))
    return cfg.override(args.overrides)


def run_train(args: argparse.Namespace) -> dict:
    cfg = config_from_args(args)
    if args.resume is False and (Path(cfg.out_dir) / "last.pt").exists() and int(os.environ.get("RANK", "0")) == 0:
        os.replace(Path(cfg.out_dir) / "last.pt", Path(cfg.out_dir) / f"last.{int(time.time())}.bak.pt")
    res = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(res))
    return res


def add_cli(subparsers) -> None:
    """Register ``train-generator`` and ``export-generator`` on an argparse subparsers object."""
    p = subparsers.add_parser("train-generator", help="train the synth StyleGAN2 (resumable, MLflow, torchrun)")
    _add_train_args(p)
    p.set_defaults(func=run_train)
    e = subparsers.add_parser("export-generator", help="export g_ema of a GAN checkpoint (rosinality .pt + JSON)")
    e.add_argument("--ckpt", default="runs/synth_gan/last.pt")
    e.add_argument("--out", default="e4e/synth/assets/generator_synth64.pt")
    e.add_argument("--grid", default="reports/figures/synth_generator_samples.png")
    e.add_argument("--data", default="data/synth")
    e.add_argument("--n-fid", type=int, default=5000)
    e.add_argument("--no-fid", action="store_true")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--command-line", default="", help="training command recorded in the provenance file")
    e.add_argument("--note", action="append", default=[], help="free-text note for the provenance file")
    from e4e.synth.export import run_export

    e.set_defaults(func=run_export)


@guarded()
def main(argv: list[str] | None = None):
    parser = Parser(prog="python -m e4e.synth.gan", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_cli(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()
