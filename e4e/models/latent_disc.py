"""Latent-codes discriminator and codes pool (e4e, Tov et al. 2021, §4.2 "Latent discriminator").

The discriminator tells real w = mapping(z) from encoder codes, pushing every W+ row towards W.
``LatentCodesDiscriminator(512, 4)`` has the official layout ``mlp.0/2/4`` Linear(512, 512) with
LeakyReLU(0.2) and ``mlp.6`` Linear(512, 1). ``LatentCodesPool`` is the image-pool trick
(Shrivastava et al. 2017) applied to codes, with the official semantics: until full, every query
code is stored and returned; afterwards, with probability 1/2 a stored code is returned and
replaced by the query code, else the query code is returned. A W+ code [n, D] contributes one
random row. Randomness comes from the pool's own ``torch.Generator`` (never the global RNG).
"""
from __future__ import annotations

import torch
from torch import nn


class LatentCodesDiscriminator(nn.Module):
    def __init__(self, style_dim: int = 512, n_mlp: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_mlp - 1):
            layers += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(style_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """w [..., D] -> logits [..., 1]."""
        return self.mlp(w)


class LatentCodesPool:
    """History pool of latent codes; ``query(ws)`` with ws [B, D] (w) or [B, n, D] (w+) -> [B, D]."""

    def __init__(self, pool_size: int = 50, generator: torch.Generator | None = None, seed: int = 0):
        self.pool_size = int(pool_size)
        self.rng = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.ws: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.ws)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.rng))

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.rng))

    @torch.no_grad()
    def query(self, ws: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return ws
        out = []
        for w in ws:
            if w.ndim == 2:
                w = w[self._randint(w.shape[0])]
            w = w.detach().clone()
            if len(self.ws) < self.pool_size:
                self.ws.append(w)
                out.append(w)
            elif self._uniform() > 0.5:
                i = self._randint(self.pool_size)
                out.append(self.ws[i].to(w))
                self.ws[i] = w
            else:
                out.append(w)
        return torch.stack(out, 0)

    def state_dict(self) -> dict:
        return {"pool_size": self.pool_size, "ws": [w.cpu() for w in self.ws], "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.pool_size = int(state["pool_size"])
        self.ws = [w.clone() for w in state["ws"]]
        if state.get("rng") is not None:
            self.rng.set_state(state["rng"])
