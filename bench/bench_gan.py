"""Seconds per GAN training step (D + lazy R1 share + G) for candidate synth architectures.

    python bench/bench_gan.py [--batch 16 32] [--threads 2] [--steps 5]

Uses random uint8 images (the cost does not depend on the content)."""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from e4e.synth.gan import GANConfig, GANTrainer, parse_channels

CANDIDATES = {
    "c128-32": "4:128,8:128,16:128,32:64,64:32",
    "c256-32": "4:256,8:256,16:128,32:64,64:32",
    "c64": "4:64,8:64,16:64,32:64,64:32",
}


def bench(channels: str, batch: int, style_dim: int, steps: int) -> dict:
    imgs = (torch.rand(256, 3, 64, 64) * 255).to(torch.uint8)
    with tempfile.TemporaryDirectory() as d:
        cfg = GANConfig(out_dir=d, tracking_uri="none", progress=False, sample_every=0, batch=batch,
                        style_dim=style_dim, channels=parse_channels(channels), ckpt_every_minutes=0)
        tr = GANTrainer(cfg, images=imgs, resume=False)
        tr.train_step()  # warm-up, includes the R1 step 0
        t = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        sps = (time.perf_counter() - t) / steps
    return {"channels": channels, "batch": batch, "style_dim": style_dim, "s_per_step": round(sps, 3),
            "img_per_s": round(batch / sps, 1)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    p.add_argument("--style-dim", type=int, nargs="+", default=[512])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--only", nargs="*", default=None, help="candidate names")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for name, ch in CANDIDATES.items():
        if a.only and name not in a.only:
            continue
        for b in a.batch:
            for sd in a.style_dim:
                print(json.dumps({"name": name, **bench(ch, b, sd, a.steps)}), flush=True)


if __name__ == "__main__":
    main()
