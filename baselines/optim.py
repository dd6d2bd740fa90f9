"""Optimisation inversion baselines (docs/design.md §7, NVlabs ``projector.py`` protocol), as Inverters.

- ``optim_w``: one w per image (repeated over the W+ rows), NVlabs projector.
- ``optim_wplus``: one code per W+ row, same schedule.
- ``optim_from_encoder``: W+ optimisation initialised from an encoder inverter's codes
  (IDInvert-style "domain-guided" initialisation); noise maps start from the generator's constant
  noise, so step 0 reproduces the encoder's reconstruction.

Protocol: w_avg / w_std from ``w_avg_samples`` (10k) mapped z; Adam (betas 0.9, 0.999), lr 0.1 x
min(1, t/0.05) x (1/2 - 1/2 cos(pi min(1, (1-t)/0.25))); latent noise 0.05 w_std max(0, 1 - t/0.75)^2;
per-layer noise maps optimised with the multi-scale autocorrelation regulariser (shifts of 1 in x
and y, average-pooled down to 8x8) weighted 1e5 and re-normalised (zero mean, unit variance) after
every step. Perceptual distance: LPIPS-VGG16 when ``e4e.weights`` finds the VGG16 trunk, else the
configured ``fallback`` ('l2', 'lpips_alex', 'domain_features'); the distance actually used is
``inverter.perceptual`` (log it as a run tag). Images wider than 256 px are area-resized to 256
before the perceptual distance (as NVlabs). Each image in a batch is optimised independently (the
loss is a sum of per-image terms; Adam is element-wise).

``invert`` runs the optimisation under ``torch.enable_grad`` (so it works under ``no_grad``) and
returns detached W+ codes. The optimised noise maps of the latest ``invert`` are kept in
``inverter.noise`` and used by ``generate`` for codes of the same shape (reconstructions and edits of
that batch); ``reset_noise()`` forgets them.
"""
from __future__ import annotations

import math
import sys
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from e4e.inverters import Inverter, register_inverter
from e4e.weights import WeightsMissingError


# ---------------------------------------------------------------------------------------------
# schedule / regulariser (pure functions, unit-tested)
# ---------------------------------------------------------------------------------------------
def lr_schedule(t: float, base_lr: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * (min(1.0, t / rampup) if rampup > 0 else 1.0)
    return base_lr * ramp


def latent_noise_scale(t: float, w_std: float, strength: float = 0.05, ramp: float = 0.75) -> float:
    return w_std * strength * max(0.0, 1.0 - t / ramp) ** 2


def noise_regularizer(noises: list[torch.Tensor]) -> torch.Tensor:
    """Per image: sum over maps and pyramid levels (down to 8x8) of the squared autocorrelation at a
    shift of 1 in x and in y; summed over the batch. Maps are [B, 1, H, W]."""
    reg = noises[0].new_zeros(())
    for n in noises:
        while True:
            reg = reg + (n * torch.roll(n, shifts=1, dims=3)).mean((1, 2, 3)).pow(2).sum()
            reg = reg + (n * torch.roll(n, shifts=1, dims=2)).mean((1, 2, 3)).pow(2).sum()
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, kernel_size=2)
    return reg


@torch.no_grad()
def renormalize_noise(noises: list[torch.Tensor]) -> None:
    for n in noises:
        n.sub_(n.mean((1, 2, 3), keepdim=True))
        n.mul_(n.square().mean((1, 2, 3), keepdim=True).rsqrt())


# ---------------------------------------------------------------------------------------------
# perceptual distances (per image)
# ---------------------------------------------------------------------------------------------
class _PerImageL2(nn.Module):
    def forward(self, a, b):
        return (a - b).pow(2).mean((1, 2, 3))


def _lpips(net):
    from e4e.losses import LPIPSLoss

    m = LPIPSLoss(net)
    return lambda a, b: m.per_image(a, b), m


def _domain(device):
    from e4e.losses import build_perceptual

    m = build_perceptual("domain", device)
    return lambda a, b: m.per_image(a, b), m


PERCEPTUAL: dict[str, Callable] = {
    "lpips_vgg": lambda device: _lpips("vgg"),
    "lpips_alex": lambda device: _lpips("alex"),
    "l2": lambda device: (_PerImageL2(), _PerImageL2()),
    "domain_features": _domain,
}


def build_distance(name: str, fallback: str | None, device):
    """(fn(a, b) -> [B], module, name used). Missing weights for ``name`` -> ``fallback`` (if any)."""
    if name not in PERCEPTUAL:
        raise ValueError(f"unknown perceptual distance {name!r}; known: {sorted(PERCEPTUAL)}")
    try:
        fn, mod = PERCEPTUAL[name](device)
        return fn, mod, name
    except WeightsMissingError as exc:
        if not fallback or fallback == "none" or fallback == name:
            raise
        print(f"warning: projection distance {name!r} unavailable ({str(exc).splitlines()[0]}); "
              f"using the fallback {fallback!r}", file=sys.stderr, flush=True)
        fn, mod = PERCEPTUAL[fallback](device)
        return fn, mod, fallback


# ---------------------------------------------------------------------------------------------
# the inverter
# ---------------------------------------------------------------------------------------------
class OptimizationInverter(Inverter):
    """Projection into W (``mode='w'``) or W+ (``mode='wplus'``); ``init_inverter`` gives the start codes."""

    method = "optim"

    def __init__(self, generator, latent_avg: torch.Tensor | None = None, input_size: int | None = None,
                 mode: str = "wplus", steps: int = 1000, lr: float = 0.1, w_avg_samples: int = 10_000,
                 lr_rampup: float = 0.05, lr_rampdown: float = 0.25, noise_strength: float = 0.05,
                 noise_ramp: float = 0.75, noise_reg_weight: float = 1e5, optimize_noise: bool = True,
                 perceptual: str = "lpips_vgg", fallback: str = "l2", l2_weight: float = 0.0, seed: int = 0,
                 init_inverter: Inverter | None = None, progress: bool = False):
        if mode not in ("w", "wplus"):
            raise ValueError(f"mode must be 'w' or 'wplus', got {mode!r}")
        generator = generator.eval().requires_grad_(False)
        dev = next(generator.parameters()).device
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(w_avg_samples, generator.style_dim, generator=g).to(dev)
            w = torch.cat([generator.mapping(c) for c in z.split(4096)])
            w_avg = w.mean(0, keepdim=True)
            w_std = float(((w - w_avg).square().sum() / w_avg_samples).sqrt())
        super().__init__(generator, latent_avg if latent_avg is not None else w_avg, input_size)
        self.register_buffer("w_avg", w_avg.float())
        self.w_std = w_std
        self.mode, self.steps, self.lr = mode, steps, lr
        self.lr_rampup, self.lr_rampdown = lr_rampup, lr_rampdown
        self.noise_strength, self.noise_ramp = noise_strength, noise_ramp
        self.noise_reg_weight, self.optimize_noise = noise_reg_weight, optimize_noise
        self.l2_weight, self.seed, self.progress = l2_weight, seed, progress
        self.init_inverter = init_inverter
        self._distance, dist_mod, self.perceptual = build_distance(perceptual, fallback, dev)
        self.requested_perceptual = perceptual
        self._dist_mod = [dist_mod]  # not a submodule: keeps the state_dict free of loss weights
        self.noise: list[torch.Tensor] | None = None
        self._noise_shape: tuple | None = None
        self.history: list[float] = []

    def reset_noise(self) -> None:
        self.noise, self._noise_shape = None, None

    def generate(self, w_plus: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        if self.noise is not None and tuple(w_plus.shape) == self._noise_shape:
            return self.decoder.synthesis(w_plus, noise=self.noise)
        return self.decoder.synthesis(w_plus, noise_mode=noise_mode)

    def _perceptual(self, y_hat, x):
        if x.shape[-1] > 256:
            h = 256 * x.shape[-2] // x.shape[-1]
            y_hat = F.interpolate(y_hat, size=(h, 256), mode="area")
            x = F.interpolate(x, size=(h, 256), mode="area")
        return self._distance(y_hat, x)

    def _start(self, images) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, dev = images.shape[0], images.device
        g = torch.Generator().manual_seed(self.seed)
        if self.init_inverter is not None:
            with torch.no_grad():
                codes = self.init_inverter.invert(images).detach().clone()
            noise = [n.detach().expand(b, -1, -1, -1).clone() for n in self.decoder.const_noise()]
        else:
            rows = 1 if self.mode == "w" else self.n_latent
            codes = self.w_avg.detach().reshape(1, 1, -1).repeat(b, rows, 1).clone()
            noise = [torch.randn((b, 1, *n.shape[-2:]), generator=g).to(dev) for n in self.decoder.const_noise()]
        if self.mode == "w" and codes.shape[1] != 1:
            codes = codes.mean(1, keepdim=True)
        return codes, noise

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        from e4e.losses import match_size

        images = images.detach()
        dev = images.device
        with torch.enable_grad():
            w_opt, noise = self._start(images)
            w_opt.requires_grad_(True)
            params = [w_opt]
            if self.optimize_noise:
                for n in noise:
                    n.requires_grad_(True)
                params += noise
            opt = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999))
            g = torch.Generator(device=dev).manual_seed(self.seed + 1)
            self.history = []
            it = range(self.steps)
            if self.progress:
                from e4e.progress import track

                it = track(it, f"{self.method} projection", leave=False)
            for step in it:
                t = step / self.steps
                for pg in opt.param_groups:
                    pg["lr"] = lr_schedule(t, self.lr, self.lr_rampup, self.lr_rampdown)
                scale = latent_noise_scale(t, self.w_std, self.noise_strength, self.noise_ramp)
                w_noisy = w_opt + torch.randn(w_opt.shape, generator=g, device=dev) * scale
                ws = w_noisy.expand(-1, self.n_latent, -1) if self.mode == "w" else w_noisy
                y_hat = match_size(self.decoder.synthesis(ws, noise=noise), images.shape[-2:])
                dist = self._perceptual(y_hat, images).sum()
                loss = dist
                if self.l2_weight > 0:
                    loss = loss + self.l2_weight * (y_hat - images).pow(2).mean((1, 2, 3)).sum()
                if self.optimize_noise and self.noise_reg_weight > 0:
                    loss = loss + self.noise_reg_weight * noise_regularizer(noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if self.optimize_noise:
                    renormalize_noise(noise)
                self.history.append(float(dist.detach()) / images.shape[0])
        w = w_opt.detach()
        w_plus = w.expand(-1, self.n_latent, -1).clone() if self.mode == "w" else w.clone()
        self.noise = [n.detach() for n in noise]
        self._noise_shape = tuple(w_plus.shape)
        return w_plus


@register_inverter("optim_w")
class OptimWInverter(OptimizationInverter):
    method = "optim_w"

    def __init__(self, generator, latent_avg=None, input_size=None, **kw):
        kw.pop("mode", None)
        super().__init__(generator, latent_avg, input_size, mode="w", **kw)


@register_inverter("optim_wplus")
class OptimWPlusInverter(OptimizationInverter):
    method = "optim_wplus"

    def __init__(self, generator, latent_avg=None, input_size=None, **kw):
        kw.pop("mode", None)
        super().__init__(generator, latent_avg, input_size, mode="wplus", **kw)


@register_inverter("optim_from_encoder")
class OptimFromEncoderInverter(OptimizationInverter):
    """W+ optimisation started from ``encoder`` (an Inverter, or a checkpoint path for load_inverter)."""

    method = "optim_from_encoder"

    def __init__(self, generator, latent_avg=None, input_size=None, encoder=None, **kw):
        if encoder is None:
            raise ValueError("optim_from_encoder needs an encoder inverter (or checkpoint path) to start from")
        if isinstance(encoder, (str, bytes)) or hasattr(encoder, "__fspath__"):
            from e4e.checkpoints import load_inverter

            encoder = load_inverter(encoder)
        kw.pop("mode", None)
        encoder = encoder.to(next(generator.parameters()).device).eval()
        if latent_avg is None:
            latent_avg = encoder.latent_avg
        super().__init__(generator, latent_avg, input_size or encoder.input_size, mode="wplus",
                         init_inverter=encoder, **kw)


def projection_kwargs(pcfg, seed: int = 0) -> dict:
    """Constructor keyword arguments from a ``ProjectionConfig``."""
    return dict(steps=pcfg.steps, lr=pcfg.lr, w_avg_samples=pcfg.w_avg_samples, lr_rampup=pcfg.lr_rampup,
                lr_rampdown=pcfg.lr_rampdown, noise_strength=pcfg.noise_strength, noise_ramp=pcfg.noise_ramp,
                noise_reg_weight=pcfg.noise_reg_weight, optimize_noise=pcfg.optimize_noise,
                perceptual=pcfg.perceptual, fallback=pcfg.fallback, l2_weight=pcfg.l2_weight, seed=seed)


def build_inverter(method: str, cfg, encoder_checkpoint: str | None = None, generator=None, device=None):
    """An optimisation inverter from a ``TrainConfig`` (its ``projection`` section and generator)."""
    from e4e.inverters import get_inverter

    if generator is None:
        from e4e.checkpoints import load_generator
        from e4e.train import default_generator_path

        generator = load_generator(cfg.model.generator or default_generator_path(cfg.data.domain))
    if device is not None:
        generator = generator.to(device)
    kw = projection_kwargs(cfg.projection, cfg.seed)
    if method == "optim_from_encoder":
        kw["encoder"] = encoder_checkpoint or cfg.projection.encoder_checkpoint or None
    latent_avg = getattr(generator, "latent_avg", None)
    if latent_avg is not None and latent_avg.ndim == 1:
        latent_avg = latent_avg.unsqueeze(0)
    inv = get_inverter(method)(generator, latent_avg=latent_avg, input_size=cfg.data.image_size or None, **kw)
    return inv
