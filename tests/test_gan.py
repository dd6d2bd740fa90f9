"""GAN trainer (e4e.synth.gan): runs, lazy R1, bit-identical resume, DDP (2 gloo processes)."""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from e4e.stats import fid_from_features
from e4e.synth.gan import GANConfig, GANTrainer, parse_channels, train

TINY = dict(size=16, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 8}, batch=4, r1_every=2,
            sample_every=0, progress=False, n_sample=4, ckpt_every_minutes=0)


def _images(n=24, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def _cfg(tmp_path, name="run", **kw):
    d = dict(TINY, out_dir=str(tmp_path / name), tracking_uri="none")
    d.update(kw)
    return GANConfig(**d)


def _tensors(ck):
    for part in ("g", "d", "g_ema"):
        for k, v in ck[part].items():
            yield f"{part}.{k}", v
    for part in ("opt_g", "opt_d"):
        for pid, st in ck[part]["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    yield f"{part}.{pid}.{k}", v


def test_trainer_runs_losses_finite_and_r1_only_on_lazy_steps(tmp_path):
    tr = GANTrainer(_cfg(tmp_path, steps=4), images=_images(), resume=False)
    logs = [tr.train_step() for _ in range(4)]
    for i, lg in enumerate(logs):
        assert all(math.isfinite(v) for v in lg.values()), lg
        assert ("r1" in lg) == (i % 2 == 0), (i, lg)
        assert lg["r1"] > 0 if "r1" in lg else True
    assert tr.step == 4
    # EMA generator differs from G but stays close
    diffs = [(p - q).abs().max().item() for p, q in zip(tr.g.parameters(), tr.g_ema.parameters())]
    assert max(diffs) > 0


def test_lazy_regularisation_corrections_and_path_length(tmp_path):
    cfg = _cfg(tmp_path, pl_weight=2.0, pl_every=2, r1_every=4)
    tr = GANTrainer(cfg, images=_images(), resume=False)
    c_d, c_g = 4 / 5, 2 / 3
    assert tr.opt_d.param_groups[0]["lr"] == pytest.approx(cfg.lr * c_d)
    assert tr.opt_d.param_groups[0]["betas"][1] == pytest.approx(0.99 ** c_d)
    assert tr.opt_g.param_groups[0]["lr"] == pytest.approx(cfg.lr * c_g)
    logs = [tr.train_step() for _ in range(2)]
    assert "pl" in logs[0] and "pl" not in logs[1]
    assert math.isfinite(logs[0]["pl"]) and tr.pl_mean.item() > 0


def test_resume_is_bit_identical(tmp_path):
    imgs = _images()
    full = _cfg(tmp_path, "full", steps=4, pl_weight=1.0, pl_every=2)
    train(full, images=imgs, resume=True)
    half = _cfg(tmp_path, "half", steps=2, pl_weight=1.0, pl_every=2)
    train(half, images=imgs, resume=True)
    mid = torch.load(tmp_path / "half" / "last.pt", weights_only=True)
    assert mid["step"] == 2
    rest = _cfg(tmp_path, "half", steps=4, pl_weight=1.0, pl_every=2)
    tr = GANTrainer(rest, images=imgs, resume=True)
    assert tr.resumed and tr.step == 2
    tr.fit()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "half" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    ta, tb = dict(_tensors(a)), dict(_tensors(b))
    assert ta.keys() == tb.keys() and len(ta) > 50
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert torch.equal(a["pl_mean"], b["pl_mean"])


def test_resume_rejects_changed_architecture(tmp_path):
    imgs = _images()
    train(_cfg(tmp_path, steps=1), images=imgs)
    with pytest.raises(ValueError, match="config differs"):
        GANTrainer(_cfg(tmp_path, steps=2, style_dim=16), images=imgs, resume=True)


def test_mlflow_logging_and_resume_into_same_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    imgs = _images()
    r1 = train(_cfg(tmp_path, steps=2, tracking_uri=uri, log_every=1, sample_every=2), images=imgs)
    r2 = train(_cfg(tmp_path, steps=3, tracking_uri=uri, log_every=1, sample_every=2), images=imgs)
    assert r1["run_id"] == r2["run_id"]
    client = MlflowClient(uri)
    hist = client.get_metric_history(r1["run_id"], "gan/loss_d")
    assert sorted(m.step for m in hist) == [1, 2, 3]
    assert all(math.isfinite(m.value) for m in hist)
    assert len(client.get_metric_history(r1["run_id"], "gan/r1")) == 2  # steps 0 and 2 (logged as 1, 3)
    arts = [a.path for a in client.list_artifacts(r1["run_id"], "samples")]
    assert any(p.endswith(".png") for p in arts)
    assert client.get_run(r1["run_id"]).info.status == "FINISHED"


def test_mixing_regularisation_mixes_rows(tmp_path):
    tr = GANTrainer(_cfg(tmp_path, mixing_prob=1.0), images=_images(), resume=False)
    w = tr._mixed_w(8)
    # every sample switches to a second w at its cutoff (1 <= cutoff < n_latent)
    for i in range(8):
        rows = w[i]
        assert not torch.equal(rows[0], rows[-1])
    tr0 = GANTrainer(_cfg(tmp_path, "nomix", mixing_prob=0.0), images=_images(), resume=False)
    w0 = tr0._mixed_w(4)
    assert torch.equal(w0, w0[:, :1].expand_as(w0))


def test_data_order_is_function_of_step_and_rank(tmp_path):
    from e4e.synth.gan import _DataOrder

    o = _DataOrder(10, seed=3)
    seen = torch.cat([o.indices(s, 5, r, 2) for s in range(1) for r in range(2)])
    assert sorted(seen.tolist()) == list(range(10))  # one epoch split over 2 ranks, no overlap
    assert torch.equal(o.indices(7, 4, 1, 2), _DataOrder(10, seed=3).indices(7, 4, 1, 2))


def test_fid_from_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert fid_from_features(a, a) == pytest.approx(0, abs=1e-6)
    b = a + 1.0
    assert fid_from_features(a, b) == pytest.approx(4.0, rel=1e-3)


def test_parse_channels():
    assert parse_channels("4:8,8:4") == {4: 8, 8: 4}
    assert parse_channels(16)[64] == 16
    assert parse_channels('{"4": 3}') == {4: 3}


def test_cli_train_generator(tmp_path):
    import argparse

    from e4e.synth import gan

    folder = tmp_path / "data" / "train"
    folder.mkdir(parents=True)
    from PIL import Image
    for i, im in enumerate(_images(8).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(im).save(folder / f"{i:05d}.png")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    gan.add_cli(sub)
    args = parser.parse_args(["train-generator", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                              "--steps", "2", "--batch", "4", "--channels", "4:16,8:16,16:8", "--n-mlp", "2",
                              "--style-dim", "32", "--size", "16", "--tracking-uri", "none",
                              "sample_every=0", "progress=false", "r1_every=2"])
    res = args.func(args)
    assert res["step"] == 2 and Path(res["checkpoint"]).exists()
    with pytest.raises(ValueError, match="unknown"):
        gan.config_from_args(parser.parse_args(["train-generator", "nope=1"]))


def test_export_generator_rosinality_format(tmp_path):
    from e4e.models.stylegan2 import Generator
    from e4e.synth.export import export_generator

    train(_cfg(tmp_path, steps=1), images=_images())
    info = export_generator(tmp_path / "run" / "last.pt", tmp_path / "g.pt", grid=tmp_path / "grid.png", n_avg=256)
    ck = torch.load(tmp_path / "g.pt", weights_only=True)
    assert set(ck) >= {"g_ema", "latent_avg"} and ck["latent_avg"].shape[-1] == 32
    g = Generator(16, 32, 2, channels=TINY["channels"])
    g.load_state_dict(ck["g_ema"], strict=True)
    assert info["steps"] == 1 and (tmp_path / "g.json").exists() and (tmp_path / "grid.png").exists()
    try:
        from e4e.checkpoints import load_generator
    except ImportError:
        return
    g2 = load_generator(tmp_path / "g.pt")
    assert g2.n_mlp == 2 and g2.style_dim == 32 and dict(g2.channels) == TINY["channels"]
    z = torch.randn(2, 32)
    assert torch.equal(g2.sample(z, noise_mode="const"), g.sample(z, noise_mode="const"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker_saving_weights(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    imgs = _images(32)
    cfg = GANConfig(**dict(TINY, steps=2, out_dir=str(out), tracking_uri="none", num_threads=1, device="cpu"))
    tr = GANTrainer(cfg, images=imgs, rank=rank, world=world, resume=False)
    tr.fit()
    torch.save({"g": tr.g.state_dict(), "d": tr.d.state_dict(), "g_ema": tr.g_ema.state_dict(),
                "batch0": tr.real_batch(0)}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_stay_in_sync(tmp_path):
    import torch.multiprocessing as mp

    port = _free_port()
    mp.spawn(_ddp_worker_saving_weights, args=(2, port, tmp_path), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert not torch.equal(a["batch0"], b["batch0"])  # ranks see different data
    for part in ("g", "d", "g_ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["step"] == 2
    assert ck["images_seen"] == 2 * 2 * TINY["batch"]


def test_sigterm_stops_cleanly_and_saves(tmp_path):
    import signal

    tr = GANTrainer(_cfg(tmp_path, steps=10), images=_images(), resume=False)
    orig = tr.train_step

    def step():
        out = orig()
        if tr.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    tr.train_step = step
    res = tr.fit()
    assert res["stopped"] == "signal" and res["step"] == 2
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_override_uses_the_project_dotlist_grammar():
    cfg = GANConfig(**TINY).override(["steps=1e3", "progress=off", "lr=1", "--seed=3", "tracking_uri=none"])
    assert (cfg.steps, cfg.progress, cfg.lr, cfg.seed, cfg.tracking_uri) == (1000, False, 1.0, 3, "none")
    assert isinstance(cfg.lr, float) and isinstance(cfg.steps, int)
    assert cfg.override(["channels=4:8,8:8,16:4"]).channels == {4: 8, 8: 8, 16: 4}
    assert cfg.override(["channels=16"]).channels[16] == 16
    # one "res:ch" entry is no base-60 YAML int
    assert GANConfig(size=4, channels={4: 1}).override(["channels=4:16"]).channels == {4: 16}
    for bad in (["nope=1"], ["steps=abc"], ["progress=maybe"], ["steps"]):
        with pytest.raises(ValueError):
            cfg.override(bad)


_KILL_SCRIPT = r'''
import json, os, signal, sys
import torch
from e4e.synth import gan

cfg = gan.GANConfig(**json.loads(sys.argv[1]))
images = torch.load(sys.argv[2], weights_only=True)
where, at = sys.argv[3], int(sys.argv[4])
if where == "after_save":   # last.pt replaced, MLflow not yet flushed
    orig = gan.GANTrainer.save
    def save(self, path=None):
        out = orig(self, path)
        if self.step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    gan.GANTrainer.save = save
elif where == "writing":    # half of last.pt of step `at` written to its temporary file
    import io
    orig = torch.save
    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == at and "g_ema" in obj and hasattr(f, "write"):
            buf = io.BytesIO()
            orig(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(obj, f, *a, **k)
    torch.save = save
else:                       # in the middle of a checkpoint interval
    orig = gan.GANTrainer.train_step
    def train_step(self):
        out = orig(self)
        if self.step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    gan.GANTrainer.train_step = train_step
gan.train(cfg, images=images)
'''


@pytest.mark.parametrize("where,at", [("after_save", 4), ("mid_interval", 5), ("writing", 6)])
def test_kill9_resumes_to_identical_weights_and_logs_every_step_once(where, at, tmp_path):
    """kill -9 right after ``last.pt`` is replaced (before the MLflow flush), between checkpoints, or
    half-way through writing the step-6 checkpoint (``last.pt`` stays the step-4 one):
    the resumed run ends with the uninterrupted run's weights, in the same MLflow run, every metric
    step exactly once."""
    pytest.importorskip("mlflow")
    import json
    import subprocess
    import sys

    from e4e.tracking import get_client

    imgs = _images()
    torch.save(imgs, tmp_path / "images.pt")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    kw = dict(steps=8, ckpt_every=2, log_every=1, tracking_uri=uri)
    ref = train(_cfg(tmp_path, "ref", **kw), images=imgs)
    cfg = _cfg(tmp_path, "killed", **kw)
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, json.dumps(cfg.to_dict()),
                           str(tmp_path / "images.pt"), where, str(at)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ck = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert ck["step"] == 4
    client = get_client(uri)
    run_id = ck["mlflow_run_id"]
    flushed = sorted(m.step for m in client.get_metric_history(run_id, "gan/loss_d"))
    assert flushed == ([1, 2] if where == "after_save" else [1, 2, 3, 4])  # the kill lost the unflushed rows
    res = train(_cfg(tmp_path, "killed", **kw), images=imgs)
    assert res["run_id"] == run_id and res["step"] == 8
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    ta, tb = dict(_tensors(a)), dict(_tensors(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    for key in ("gan/loss_d", "gan/loss_g", "gan/kimg"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, 9)), key
    assert sorted(m.step for m in client.get_metric_history(run_id, "gan/r1")) == [1, 3, 5, 7]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(ref["run_id"], "gan/loss_d")) == list(range(1, 9))
