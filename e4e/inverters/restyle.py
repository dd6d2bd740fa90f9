"""ReStyle iterative inversion (Alaluf et al., ICCV 2021), the iterative baseline next to e4e.

Iteration t feeds the encoder the 6-channel input ``cat(x, y_{t-1})`` (both at the encoder input
size) and adds its output to the previous code: ``w_t = w_{t-1} + E(x, y_{t-1})``,
``y_t = G(w_t)`` with constant noise. Iteration 0 starts from ``w_0 = latent_avg`` and the average
image ``y_0 = G(latent_avg)`` (official ``run_on_batch``; default 5 iterations). 'restyle_psp' uses
ReStyle's ``BackboneEncoder``, 'restyle_e4e' its ``ProgressiveBackboneEncoder``; both IR-SE-50 by
default (``backbone='resnet34'`` for the official non-face encoders).
"""
from __future__ import annotations

import torch

from e4e.inverters.base import register_inverter
from e4e.inverters.encoder import EncoderInverter
from e4e.models.encoders import fit_to_input


class ReStyleInverter(EncoderInverter):
    """``invert`` runs ``n_iters`` refinement steps; ``refine`` is one step (used by the trainer)."""

    method = "restyle"

    def __init__(self, generator, latent_avg=None, input_size=None, encoder=None, n_iters: int = 5,
                 **encoder_kwargs):
        if encoder is None:
            encoder_kwargs.setdefault("input_nc", 6)
        super().__init__(generator, latent_avg, input_size, encoder=encoder, **encoder_kwargs)
        self.n_iters = int(n_iters)

    def inverter_config(self) -> dict:
        return {**super().inverter_config(), "n_iters": self.n_iters}

    @torch.no_grad()
    def average_image(self, batch: int = 1) -> torch.Tensor:
        """G(latent_avg) with constant noise, [batch, 3, H, W]."""
        y = self.generate(self.latent_avg.unsqueeze(0), noise_mode="const")
        return y.expand(batch, -1, -1, -1)

    def refine(self, x: torch.Tensor, y_prev: torch.Tensor, w_prev: torch.Tensor) -> torch.Tensor:
        """One ReStyle step: ``w_prev + E(cat(x, y_prev))`` -> [B, n_latent, D]."""
        inp = torch.cat([fit_to_input(x, self.input_size), fit_to_input(y_prev, self.input_size).to(x)], 1)
        return w_prev + self.encoder(inp)

    def invert(self, images: torch.Tensor, n_iters: int | None = None, return_steps: bool = False):
        """Codes after ``n_iters`` (default ``self.n_iters``) steps; with ``return_steps`` also the
        list of the codes after every step."""
        b = images.shape[0]
        w = self.latent_avg.to(images.dtype).unsqueeze(0).expand(b, -1, -1)
        y = self.average_image(b)
        steps = []
        n = self.n_iters if n_iters is None else int(n_iters)
        for t in range(n):
            w = self.refine(images, y, w)
            steps.append(w)
            if t + 1 < n:
                y = self.generate(w, noise_mode="const")
        return (w, steps) if return_steps else w


@register_inverter("restyle_psp")
class ReStylePSPInverter(ReStyleInverter):
    method = encoder_method = "restyle_psp"


@register_inverter("restyle_e4e")
class ReStyleE4EInverter(ReStyleInverter):
    method = encoder_method = "restyle_e4e"
