"""The distributed helpers every trainer shares (``e4e.train`` and ``e4e.synth.gan``).

A process launched by ``torchrun`` (``WORLD_SIZE`` > 1) joins the default process group — nccl on
cuda, gloo otherwise — unless one is already initialised (then it is used and not owned). A single
process (``WORLD_SIZE`` unset or 1) makes no ``torch.distributed`` call at all: every helper below
returns at once when the world is 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch

__all__ = ["DistInfo", "active", "setup", "cleanup", "allreduce_grads", "allreduce_mean", "gather_object",
           "broadcast_object", "broadcast_tensor"]


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def active():
    """``torch.distributed`` when a process group is initialised, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def setup(device_type: str | torch.device) -> DistInfo:
    """Join a process group when launched by torchrun (``WORLD_SIZE`` > 1): nccl for cuda, gloo
    otherwise; an already initialised group is used (``owns_group`` False). ``local_rank`` from
    ``LOCAL_RANK`` (default 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        kind = device_type.type if isinstance(device_type, torch.device) else str(device_type)
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if ``setup`` created it."""
    if info.owns_group:
        d = active()
        if d is not None:
            d.destroy_process_group()


def allreduce_grads(params: Iterable[torch.nn.Parameter], world: int, zero_missing: bool = True) -> None:
    """Average the gradients of ``params`` over the ranks in one flat all-reduce. A parameter without a
    gradient takes part with zeros and is given the averaged gradient (``zero_missing``), or is left
    out and keeps ``grad=None`` (``zero_missing=False``; every rank must then lack the same ones)."""
    if world <= 1:
        return
    d = active()
    if d is None:
        return
    params = [p for p in params if zero_missing or p.grad is not None]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    d.all_reduce(flat)
    flat /= world
    off = 0
    for p in params:
        n = p.numel()
        g = flat[off:off + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        off += n


def allreduce_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of ``x`` over the ranks (``x`` itself in a single process)."""
    d = active() if world > 1 else None
    if d is None:
        return x
    x = x.clone()
    d.all_reduce(x)
    return x / world


def gather_object(obj, world: int) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    d = active() if world > 1 else None
    if d is None:
        return [obj]
    out: list = [None] * world
    d.all_gather_object(out, obj)
    return out


def broadcast_object(obj, world: int, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    d = active() if world > 1 else None
    if d is None:
        return obj
    box = [obj]
    d.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensor(x: torch.Tensor, world: int, device: torch.device | None = None, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s tensor on every rank (sent via ``device``, returned on ``x``'s device)."""
    d = active() if world > 1 else None
    if d is None:
        return x
    y = x.to(device) if device is not None else x.clone()
    d.broadcast(y, src)
    return y.to(x.device)
