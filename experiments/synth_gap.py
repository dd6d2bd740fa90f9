"""The readout that defines the synth realism gap (``python -m experiments.synth gap-readout``).

For each gap level G, ``n`` "real" images (``render(attrs, gap=G, seeds=...)``, the data set's
law) and ``n`` generator samples G(mapping(z)) are inverted by optimisation into W and into W+
(``baselines.optim``, the same projector and schedule for every set), and the pixel L2 of each
reconstruction is measured. Reported per gap:

- ``wplus_real_over_gen``: W+ optimisation L2 on real images / on generator samples. 1 means the
  real images are as reachable as the generator's own; the larger, the wider the gap.
- ``w_over_wplus_real``: W optimisation L2 / W+ optimisation L2 on real images: how much the extra
  freedom of W+ buys (the paper's premise: large on real images, ~1 on the generator's samples,
  reported as ``w_over_wplus_gen``).
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
from e4e.cli import HelpFormatter
from e4e.fileio import quantize_8bit

__all__ = ["gap_readout", "add_cli"]


def _l2_of(inverter, images: torch.Tensor, batch: int) -> float:
    from metrics.distortion import l2_per_image

    out = []
    for x in images.split(batch):
        codes = inverter.invert(x)
        out.append(l2_per_image(inverter.generate(codes), x))
    return float(torch.cat(out).mean())


def _inverters(generator, steps: int, seed: int):
    from baselines.optim import OptimWInverter, OptimWPlusInverter

    kw = dict(steps=steps, perceptual="l2", fallback="l2", w_avg_samples=2000, seed=seed)
    return {"w": OptimWInverter(generator, **kw), "wplus": OptimWPlusInverter(generator, **kw)}


def gap_readout(generator, gaps, n: int = 16, steps: int = 150, seed: int = 0, batch: int = 16) -> dict:
    """Per gap level: optimisation W / W+ L2 on real images and on generator samples (see module doc)."""
    from e4e.synth.render import render, sample_attributes, stretch_attributes

    generator = generator.eval()
    invs = _inverters(generator, steps, seed)
    with torch.no_grad():
        z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
        gen = generator.sample(z, noise_mode="const").clamp(-1, 1)
    gen = quantize_8bit(gen)  # 8-bit, as the real PNGs
    on_gen = {mode: _l2_of(inv, gen, batch) for mode, inv in invs.items()}
    attrs = sample_attributes(n, np.random.default_rng([seed, 7]))
    rows = {}
    for gap in gaps:
        seeds = [(seed, 7, i) for i in range(n)]  # the data set's law: stretched attributes + details
        imgs = render(stretch_attributes(attrs, float(gap), seeds), gap=float(gap), seeds=seeds)
        real = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
        on_real = {mode: _l2_of(inv, real, batch) for mode, inv in invs.items()}
        rows[str(gap)] = {
            "l2_w_real": on_real["w"], "l2_wplus_real": on_real["wplus"],
            "wplus_real_over_gen": on_real["wplus"] / on_gen["wplus"],
            "w_over_wplus_real": on_real["w"] / on_real["wplus"],
        }
    return {"n": n, "steps": steps, "seed": seed, "l2_w_gen": on_gen["w"], "l2_wplus_gen": on_gen["wplus"],
            "w_over_wplus_gen": on_gen["w"] / on_gen["wplus"], "gaps": rows}


def _run(args) -> None:
    from e4e.checkpoints import load_generator

    torch.set_num_threads(args.threads)
    t0 = time.time()
    res = gap_readout(load_generator(args.generator), args.gaps, n=args.n, steps=args.steps, seed=args.seed)
    res["wall_s"] = round(time.time() - t0, 1)
    res["generator"] = args.generator
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def add_cli(sub) -> None:
    from e4e.train import SYNTH_GENERATOR

    p = sub.add_parser("gap-readout", help="optimisation W / W+ L2 on real vs generated images per gap level",
                       formatter_class=HelpFormatter, description=__doc__,)
    p.add_argument("--generator", default=str(SYNTH_GENERATOR), help="rosinality generator file")
    p.add_argument("--gaps", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="gap levels")
    p.add_argument("--n", type=int, default=16, help="images per set")
    p.add_argument("--steps", type=int, default=150, help="projection steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the images and of the projector")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="", help="also write the JSON here")
    p.set_defaults(func=_run)
