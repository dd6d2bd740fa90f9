"""One optimisation step of each method: the forward context (losses, latent terms, autocast, the
compiled generator), single-pass and ReStyle steps, the non-finite check and the latent
discriminator's step with its pools.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from e4e import config as C
from e4e import dist as D
from e4e.dist import DistInfo
from e4e import losses as L


@dataclass
class _Ctx:
    cfg: C.TrainConfig
    inverter: nn.Module
    model: nn.Module                 # _CodesForward, possibly DDP-wrapped
    recon: L.ReconstructionLoss
    disc: nn.Module | None
    n_active: int = 0
    avg_image: torch.Tensor | None = None
    synthesis: Callable | None = None  # the generator call of the step (compiled under cfg.compile)

    def autocast(self, device_type: str):
        """bfloat16 autocast of the forward under ``precision: bf16``; a no-op context in fp32."""
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def latent_terms(self, codes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        total = codes.new_zeros(())
        logs: dict[str, float] = {}
        if cfg.delta_reg.enabled and cfg.delta_reg.weight > 0:
            d = L.delta_reg_loss(codes, self.n_active)
            total = total + cfg.delta_reg.weight * d
            logs["loss_delta_reg"] = float(d.detach())
        if self.disc is not None:
            a = L.encoder_adv_loss(self.disc, codes[:, :self.n_active])
            total = total + cfg.adversarial.weight * a
            logs["loss_adv"] = float(a.detach())
        return total, logs

    def image_and_loss(self, codes, x):
        generate = self.synthesis or self.inverter.generate
        y_hat = generate(codes, noise_mode=self.cfg.model.noise_mode)
        y_hat = L.match_size(y_hat, x.shape[-2:])
        if self.cfg.precision != "fp32":
            y_hat, codes = y_hat.float(), codes.float()
        loss, logs = self.recon(y_hat, x)
        lt, llogs = self.latent_terms(codes)
        logs.update(llogs)
        loss = loss + lt
        logs["loss"] = float(loss.detach())
        return loss, logs, y_hat


NonFiniteError = L.NonFiniteError  # raised by this trainer; defined with the losses (CLIs catch it from there)


def non_finite_terms(logs: dict, params) -> dict[str, float]:
    """The loss terms in ``logs`` that are not finite, plus ``grad_norm`` when a gradient is not."""
    bad = {k: v for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)}
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        norm = float(torch.stack(torch._foreach_norm(grads)).norm())
        if not math.isfinite(norm):
            bad["grad_norm"] = norm
    return bad


def _single_pass_step(ctx: _Ctx, x: torch.Tensor):
    with ctx.autocast(x.device.type):
        codes = ctx.model(x)
        loss, logs, _ = ctx.image_and_loss(codes, x)
    loss.backward()
    return logs, [codes.detach().float()[:, :ctx.n_active]]


def _restyle_step(ctx: _Ctx, x: torch.Tensor):
    """Official ReStyle training: iteration 0 starts from (latent_avg, its image); each iteration's
    loss is back-propagated on its own (inputs detached); one optimizer step per batch. Logged
    losses are those of the last iteration, plus ``loss_iters_mean``."""
    n_iter = ctx.cfg.model.restyle_iters
    y_prev = ctx.avg_image.expand(x.shape[0], -1, -1, -1)
    w_prev = ctx.inverter.latent_avg.unsqueeze(0).expand(x.shape[0], -1, -1)
    fakes, total = [], 0.0
    logs: dict[str, float] = {}
    for _ in range(n_iter):
        with ctx.autocast(x.device.type):
            codes = ctx.model(x, w_prev.detach(), y_prev.detach())
            loss, logs, y_hat = ctx.image_and_loss(codes, x)
        loss.backward()
        total += float(loss.detach())
        fakes.append(codes.detach().float()[:, :ctx.n_active])
        w_prev, y_prev = codes, y_hat
    logs["loss_iters_mean"] = total / n_iter
    return logs, fakes


STEP_FNS: dict[str, Callable] = {"e4e": _single_pass_step, "psp": _single_pass_step,
                                 "w_encoder": _single_pass_step, "restyle_e4e": _restyle_step,
                                 "restyle_psp": _restyle_step}


@torch.no_grad()
def _inference(inverter, x):
    return inverter.invert(x)


def _pool_state(pool) -> Any:
    if pool is None:
        return None
    if hasattr(pool, "state_dict"):
        return pool.state_dict()
    return {k: (list(v) if isinstance(v, list) else v) for k, v in vars(pool).items()}


def _pool_load(pool, state) -> None:
    if pool is None or state is None:
        return
    if hasattr(pool, "load_state_dict"):
        pool.load_state_dict(state)
    else:
        for k, v in state.items():
            setattr(pool, k, list(v) if isinstance(v, list) else v)


def _disc_step(cfg, disc, d_opt, pools, generator, fakes: list[torch.Tensor], step: int, info: DistInfo,
               batch: int) -> dict[str, float]:
    device = fakes[0].device
    fake = torch.cat([f.reshape(-1, f.shape[-1]) for f in fakes])
    with torch.no_grad():
        real = generator.mapping(torch.randn(batch, generator.style_dim, device=device))
    if pools is not None:
        real, fake = pools[0].query(real), pools[1].query(fake)
    disc.requires_grad_(True)
    real_pred, fake_pred = disc(real), disc(fake)
    dl = L.disc_loss(real_pred, fake_pred)
    d_opt.zero_grad(set_to_none=True)
    dl.backward()
    D.allreduce_grads(disc.parameters(), info.world, zero_missing=False)
    d_opt.step()
    logs = {"loss_d": float(dl.detach()), "d_real": float(real_pred.detach().mean()),
            "d_fake": float(fake_pred.detach().mean()),
            # the latent D's accuracy on this step's batch: W samples called real, encoder codes fake
            "d_acc_real": float((real_pred.detach() > 0).float().mean()),
            "d_acc_fake": float((fake_pred.detach() < 0).float().mean())}
    if step % cfg.adversarial.r1_every == 0 and cfg.adversarial.r1_gamma > 0:
        r1 = L.r1_penalty(disc, real)
        d_opt.zero_grad(set_to_none=True)
        (cfg.adversarial.r1_gamma / 2 * r1 * cfg.adversarial.r1_every).backward()
        D.allreduce_grads(disc.parameters(), info.world, zero_missing=False)
        d_opt.step()
        logs["loss_r1"] = float(r1.detach())
    disc.requires_grad_(False)
    return logs
