"""Single-pass encoder inverters: ``invert(x) = encoder(fit_to_input(x)) + latent_avg`` for e4e
(Encoder4Editing), pSp (GradualStyleEncoder) and the W encoder; the networks are in
``e4e.models.encoders``.
"""
from __future__ import annotations

import torch
from torch import nn

from e4e.inverters.base import Inverter, register_inverter
from e4e.models.encoders import build_encoder, default_input_size, fit_to_input


class EncoderInverter(Inverter):
    """Single-pass encoder inversion: ``invert(x) = encoder(fit_to_input(x)) + latent_avg``.

    Build from a generator (``EncoderInverter(G, latent_avg, input_size, **encoder_kwargs)``; the
    encoder gets ``n_latent``/``style_dim`` from ``G``) or pass a ready ``encoder=``."""

    method = "encoder"
    encoder_method = "psp"

    def __init__(self, generator, latent_avg=None, input_size=None, encoder: nn.Module | None = None,
                 **encoder_kwargs):
        input_size = tuple(input_size) if isinstance(input_size, (tuple, list)) else input_size
        input_size = input_size or default_input_size(generator)
        super().__init__(generator, latent_avg, input_size)
        if encoder is None:
            encoder_kwargs.setdefault("input_size", input_size)
            encoder = build_encoder(self.encoder_method, n_latent=generator.n_latent, style_dim=generator.style_dim,
                                    **encoder_kwargs)
        elif encoder_kwargs:
            raise TypeError(f"encoder kwargs {sorted(encoder_kwargs)} given together with a built encoder")
        if encoder.n_latent != generator.n_latent:
            raise ValueError(f"encoder has {encoder.n_latent} rows but the generator needs {generator.n_latent}")
        self.encoder = encoder

    def inverter_config(self) -> dict:
        """Constructor arguments other than the generator/encoder (saved in own checkpoints)."""
        s = self.input_size
        return {"input_size": list(s) if isinstance(s, tuple) else s}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Raw encoder output (offsets from latent_avg) [B, n_latent, D]."""
        return self.encoder(fit_to_input(images, self.input_size))

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images) + self.latent_avg.to(images.dtype)


@register_inverter("e4e")
class E4EInverter(EncoderInverter):
    method = encoder_method = "e4e"


@register_inverter("psp")
class PSPInverter(EncoderInverter):
    method = encoder_method = "psp"


@register_inverter("w_encoder")
class WEncoderInverter(EncoderInverter):
    method = encoder_method = "w_encoder"
