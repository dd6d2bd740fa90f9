"""Seconds per encoder training step, per method, through the real trainer (e4e.train.train).

    python bench/bench_train.py [--size 64] [--batch 8] [--steps 6] [--threads 2] [--preset small full]
        [--methods e4e psp ...] [--device cpu|cuda] [--json out.json]

Generator: the shipped synth generator (e4e/synth/assets/generator_synth64.pt) at 64 px when present,
else a random Generator with the synth architecture (style_dim 512, channels 4:128 .. 64:32; the
cost does not depend on the weights). Images: generator samples. Losses: L2 + the latent terms of
each method's config (delta-reg, latent D with R1 every 16 steps; progressive off, i.e. every W+
row active = the steady state of e4e training). LPIPS and identity are off because their
pretrained trunks are not on this machine. The step time is the median of the trainer's per-step
times (encoder forward/backward, latent-D step, optimizer step; excludes MLflow, checkpoints and
validation) over ``--steps`` steps. Presets: ``full`` = the official encoder widths (IR-SE-50 /
ResNet-34 trunks), ``small`` = the encoders' small preset (width 1/8, one block per stage).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from e4e import config as C
from e4e.models.stylegan2 import Generator
from e4e.train import ENCODER_METHODS, SYNTH_GENERATOR, train

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
PRESETS = {"full": [], "small": ["model.encoder.small=true"]}
SYNTH_CHANNELS = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32}


def make_generator(size: int):
    if size == 64 and SYNTH_GENERATOR.is_file():
        from e4e.checkpoints import load_generator

        return load_generator(SYNTH_GENERATOR), "synth asset"
    torch.manual_seed(0)
    channels = {r: c for r, c in SYNTH_CHANNELS.items()} if size == 64 else None
    return Generator(size, style_dim=512, n_mlp=4, channels=channels), "random (synth architecture)"


def bench_one(method: str, preset: str, g, images, args, tmp: Path) -> dict:
    cfg = C.build_config([CONFIGS / f"{method}.yaml"], [
        f"out_dir={tmp / f'{method}-{preset}'}", f"batch_size={args.batch}", f"max_steps={args.steps}",
        "log_every=1000", "val_every=100000", "image_every=100000", "ckpt_every=100000", "progress=false",
        "loss.lpips_lambda=0", "loss.id_lambda=0", f"device={args.device}",
        "progressive.enabled=false", *PRESETS[preset]])
    ds = torch.utils.data.TensorDataset(images)
    s = train(cfg, generator=g, train_set=ds, val_set=None, tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    n_params = sum(p.numel() for p in torch.load(s["final_checkpoint"], weights_only=True)["encoder"].values())
    t = s["sec_per_step_median"]
    return {"method": method, "preset": preset, "s_per_step": round(t, 3), "img_per_s": round(args.batch / t, 2),
            "encoder_params_M": round(n_params / 1e6, 2),
            "restyle_iters": cfg.model.restyle_iters if method.startswith("restyle") else 1}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", nargs="+", default=["small", "full"], choices=sorted(PRESETS))
    p.add_argument("--methods", nargs="+", default=list(ENCODER_METHODS), choices=list(ENCODER_METHODS))
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    g, source = make_generator(a.size)
    g = g.to(a.device).eval()
    with torch.no_grad():
        images = g.sample(torch.randn(max(a.batch, 16), g.style_dim, generator=torch.Generator().manual_seed(1),
                                      device="cpu").to(a.device), noise_mode="const").clamp(-1, 1).cpu()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in a.preset:
            for m in a.methods:
                row = bench_one(m, preset, g, images, a, Path(tmp))
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {"size": a.size, "batch": a.batch, "threads": a.threads, "device": a.device, "generator": source,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}
    print(json.dumps(meta))
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
