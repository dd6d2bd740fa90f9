"""e4e.dist (the trainers' shared distributed helpers) and e4e.cli.resolve_device."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from e4e import dist as D
from e4e.cli import resolve_device


def test_single_process_makes_no_distributed_call(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def boom(*a, **k):
        raise AssertionError("torch.distributed called in a single process")

    for name in ("init_process_group", "all_reduce", "all_gather_object", "broadcast_object_list", "broadcast",
                 "destroy_process_group", "is_initialized"):
        monkeypatch.setattr(dist, name, boom)
    info = D.setup("cpu")
    assert (info.rank, info.world, info.local_rank, info.owns_group, info.enabled, info.main) == (0, 1, 0, False,
                                                                                                False, True)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    D.allreduce_grads([p], info.world)
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    x = torch.tensor(3.0)
    assert D.allreduce_mean(x, 1) is x
    assert D.gather_object("a", 1) == ["a"] and D.broadcast_object("b", 1) == "b"
    assert D.broadcast_tensor(x, 1) is x
    D.cleanup(info)


def test_resolve_device(monkeypatch):
    from e4e.config import ConfigError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu", 3) == torch.device("cpu")
    with monkeypatch.context() as m:   # the local-rank mapping, as on a 4-GPU node
        m.setattr(torch.cuda, "device_count", lambda: 4)
        assert resolve_device("cuda") == torch.device("cuda")         # no index without a local rank
        assert resolve_device("cuda", 1) == torch.device("cuda", 1)   # torchrun: cuda:<LOCAL_RANK>
        assert resolve_device("cuda:0", 2) == torch.device("cuda", 0)  # an explicit index is kept
        with pytest.raises(ConfigError, match="4 CUDA device"):
            resolve_device("cuda:4")
    with monkeypatch.context() as m:   # a machine without a GPU refuses cuda up front
        m.setattr(torch.cuda, "device_count", lambda: 0)
        with pytest.raises(ConfigError, match="0 CUDA device"):
            resolve_device("cuda", 0)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == want and resolve_device("auto", 0).type == want
    if want == "cuda":
        assert resolve_device("auto", 0) == torch.device("cuda", 0)
