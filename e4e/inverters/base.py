"""The one interface every inversion method implements (docs/design.md §2), and the method registry.

An ``Inverter`` maps images [B,3,H,W] in [-1,1] to W+ codes [B,n_latent,D] with ``latent_avg``
already added, and generates images from such codes. Encoders, ReStyle and optimisation baselines
are all Inverters, so metrics never branch on the method.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:  # the type only: the inverter base imports no model code at run time
    from e4e.models.stylegan2 import Generator


class Inverter(nn.Module):
    """Base class. Subclasses implement ``invert``; ``generate`` uses the wrapped generator."""

    method: str = "base"

    def __init__(self, generator: Generator, latent_avg: torch.Tensor | None = None, input_size: int | None = None):
        super().__init__()
        self.decoder = generator
        if latent_avg is None:
            latent_avg = torch.zeros(generator.n_latent, generator.style_dim)
        if latent_avg.ndim == 2 and latent_avg.shape[0] == 1:
            latent_avg = latent_avg.expand(generator.n_latent, -1).clone()
        self.register_buffer("latent_avg", latent_avg.reshape(generator.n_latent, generator.style_dim).float())
        self.input_size = input_size or generator.size

    @property
    def n_latent(self) -> int:
        return self.decoder.n_latent

    @property
    def style_dim(self) -> int:
        return self.decoder.style_dim

    def invert(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate(self, w_plus: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        return self.decoder.synthesis(w_plus, noise_mode=noise_mode)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.generate(self.invert(images))


INVERTERS: dict[str, Callable[..., Inverter]] = {}


def register_inverter(name: str):
    """Decorator: register a factory/class building an Inverter under ``name``."""

    def deco(obj):
        if name in INVERTERS:
            raise KeyError(f"inverter {name!r} registered twice")
        INVERTERS[name] = obj
        return obj

    return deco


def get_inverter(name: str) -> Callable[..., Inverter]:
    try:
        return INVERTERS[name]
    except KeyError:
        raise KeyError(f"unknown inversion method {name!r}; known: {sorted(INVERTERS)}") from None
