"""Optimizers for encoder training: Ranger (the e4e / pSp default) and Adam.

Ranger = RAdam (rectified adaptive moments, Liu et al. 2019) + Lookahead (k=6, alpha=0.5, Zhang et
al. 2019) + gradient centralisation (Yong et al. 2020) on every tensor with more than one dimension.
Written for this project; defaults follow the Ranger release used by the official pSp / e4e code
(betas (0.95, 0.999), eps 1e-5, N_sma threshold 5). All state (moments, step, lookahead slow
weights) lives in ``optimizer.state`` so ``state_dict`` / ``load_state_dict`` round-trip exactly.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer


class Ranger(Optimizer):
    def __init__(self, params: Iterable, lr: float = 1e-3, alpha: float = 0.5, k: int = 6,
                 n_sma_threshold: float = 5.0, betas: tuple[float, float] = (0.95, 0.999), eps: float = 1e-5,
                 weight_decay: float = 0.0, use_gc: bool = True, gc_conv_only: bool = False):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Ranger: alpha must be in [0, 1], got {alpha}")
        if k < 1:
            raise ValueError(f"Ranger: k must be >= 1, got {k}")
        if lr <= 0:
            raise ValueError(f"Ranger: lr must be > 0, got {lr}")
        if eps <= 0:
            raise ValueError(f"Ranger: eps must be > 0, got {eps}")
        defaults = dict(lr=lr, alpha=alpha, k=k, n_sma_threshold=n_sma_threshold, betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, use_gc=use_gc, gc_min_dim=3 if gc_conv_only else 1)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            n_sma_max = 2.0 / (1.0 - beta2) - 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Ranger does not support sparse gradients")
                grad = p.grad.float()
                if group["use_gc"] and grad.dim() > group["gc_min_dim"]:
                    grad = grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    state["slow_buffer"] = p.detach().float().clone()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)

                beta2_t = beta2 ** t
                n_sma = n_sma_max - 2.0 * t * beta2_t / (1.0 - beta2_t)
                rectified = n_sma > group["n_sma_threshold"]
                if rectified:
                    step_size = math.sqrt((1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma
                                          * n_sma_max / (n_sma_max - 2)) / (1 - beta1 ** t)
                else:
                    step_size = 1.0 / (1 - beta1 ** t)

                p32 = p.detach().float()
                if wd != 0:
                    p32.add_(p32, alpha=-wd * lr)
                if rectified:
                    p32.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps), value=-step_size * lr)
                else:
                    p32.add_(exp_avg, alpha=-step_size * lr)

                if t % group["k"] == 0:  # lookahead: pull slow weights toward fast, reset fast
                    slow = state["slow_buffer"]
                    slow.add_(p32 - slow, alpha=group["alpha"])
                    p32.copy_(slow)
                p.copy_(p32)
        return loss


def _adam(params, lr, weight_decay):
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)


def _ranger(params, lr, weight_decay):
    return Ranger(params, lr=lr, weight_decay=weight_decay)


OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"ranger": _ranger, "adam": _adam}


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> Optimizer:
    try:
        factory = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}") from None
    return factory(params, lr, weight_decay)
