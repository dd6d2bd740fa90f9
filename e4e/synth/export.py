"""Exporting a GAN checkpoint of ``e4e.synth.gan`` as a rosinality-format generator file (``g_ema`` and
``latent_avg``) with a provenance JSON, a sample grid and, optionally, its ``fid_domain`` (FID in the
synth attribute network's features, ``e4e.stats``) against the data set. CLI:
``python -m experiments.synth export-generator`` (registered by ``e4e.synth.gan.add_cli``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from e4e import checkpoints as CK
from e4e import tracking as T
from e4e.fileio import save_grid, to_uint8
from e4e.models.stylegan2 import Generator
from e4e.stats import fid_from_features
from e4e.synth.gan import GANConfig, load_image_folder


# ---------------------------------------------------------------------------------------------
# FID on arbitrary features (e4e.stats.fid_from_features; fid_domain uses the synth attribute network's
# features)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _features(net, images_u8_or_float: torch.Tensor, batch: int = 256) -> torch.Tensor:
    out = []
    for x in images_u8_or_float.split(batch):
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1
        out.append(net.features(x).flatten(1).double().cpu())
    return torch.cat(out)


@torch.no_grad()
def fid_domain(g: Generator, data: str | os.PathLike, n_gen: int = 5000, seed: int = 0,
               attrnet=None) -> dict:
    """fid_domain (attribute-net features) of ``n_gen`` samples vs the test split, and the floor
    (test vs train). Raises ImportError / FileNotFoundError when the attribute network is unavailable."""
    if attrnet is None:
        from e4e.synth.attrnet import load_attrnet  # noqa: WPS433 (optional dependency)
        attrnet = load_attrnet()
    attrnet.eval()
    root = Path(data)
    test = load_image_folder(root / "test")
    train_imgs = load_image_folder(root / "train", limit=n_gen, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    fakes = []
    g.eval()
    for i in range(0, n_gen, 250):
        z = torch.randn(min(250, n_gen - i), g.style_dim, generator=gen)
        # quantised to 8 bits, as the real PNGs are
        fakes.append(to_uint8(g.sample(z, noise_mode="const")))
    f_gen = _features(attrnet, torch.cat(fakes))
    f_test = _features(attrnet, test)
    f_train = _features(attrnet, train_imgs)
    return {"fid_domain_gen_vs_test": fid_from_features(f_gen, f_test),
            "fid_domain_train_vs_test": fid_from_features(f_train, f_test),
            "n_gen": n_gen, "n_test": len(test), "n_train": len(train_imgs)}


# ---------------------------------------------------------------------------------------------
# Export (rosinality format: {'g_ema': state_dict, 'latent_avg': [D]})
# ---------------------------------------------------------------------------------------------
def export_generator(ckpt: str | os.PathLike, out: str | os.PathLike, provenance: dict | None = None,
                     grid: str | os.PathLike | None = None, n_avg: int = 10_000, data: str | None = None,
                     n_fid: int = 5000) -> dict:
    """Write g_ema of a trainer checkpoint as a rosinality ``.pt`` with ``latent_avg`` (mean of
    ``n_avg`` w), a provenance JSON beside it and optionally a sample grid."""
    ck = CK.load_checkpoint(ckpt)
    cfg = GANConfig.from_dict(ck["config"])
    g = Generator(cfg.size, cfg.style_dim, cfg.n_mlp, lr_mlp=cfg.lr_mlp, channels=cfg.channels)
    g.load_state_dict(ck["g_ema"])
    g.eval().requires_grad_(False)
    latent_avg = g.mean_latent(n_avg, seed=0)[0]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from e4e.checkpoints import save_generator

    save_generator(g, out, latent_avg=latent_avg)
    info = {
        "file": out.name, "bytes": out.stat().st_size,
        "architecture": {"size": cfg.size, "style_dim": cfg.style_dim, "n_mlp": cfg.n_mlp, "lr_mlp": cfg.lr_mlp,
                         "channels": {str(k): v for k, v in cfg.channels.items()}},
        "steps": ck["step"], "batch_per_process": cfg.batch, "world_size": ck.get("world_size", 1),
        "images_seen": ck.get("images_seen"), "train_seconds": round(float(ck.get("train_seconds", 0.0)), 1),
        "train_minutes": round(float(ck.get("train_seconds", 0.0)) / 60, 2), "seed": cfg.seed,
        "mlflow_run_id": ck.get("mlflow_run_id"), "git_sha": T.git_sha(), "trainer_config": cfg.to_dict(),
        "latent_avg": f"mean of {n_avg} w (z seed 0)",
    }
    if provenance:
        info.update(provenance)
    if grid:
        z = torch.randn(64, cfg.style_dim, generator=torch.Generator().manual_seed(2021))
        save_grid(g.sample(z, noise_mode="const"), grid, nrow=8, scale=2)
        info["sample_grid"] = str(grid)
    if data is not None:
        try:
            info["fid_domain"] = fid_domain(g, data, n_gen=n_fid)
        except (ImportError, FileNotFoundError) as e:
            info["fid_domain"] = None
            info["fid_domain_note"] = f"attribute network unavailable: {e}"
    out.with_suffix(".json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info



def run_export(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    prov = {"command": args.command_line} if args.command_line else {}
    if args.note:
        prov["notes"] = args.note
    prov["export_command"] = "python -m experiments.synth export-generator " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("ckpt", args.ckpt), ("out", args.out), ("grid", args.grid),
                                                    ("data", args.data), ("n_fid", args.n_fid)))
    info = export_generator(args.ckpt, args.out, provenance=prov, grid=args.grid,
                            data=None if args.no_fid else args.data, n_fid=args.n_fid)
    print(json.dumps({k: info[k] for k in ("file", "bytes", "steps", "fid_domain") if k in info}, default=str))
    return info
