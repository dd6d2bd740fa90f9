"""Where the demo's encoder training step spends its time: the forward+backward of each piece on one
fixed batch, eager, and optionally with ``torch.compile`` applied to more and more of the step.

    python -m bench.bench_step_parts [--method e4e] [--repeats 10] [--threads 1] [--compile]

Pieces (batch 8, the synth demo member's config as in ``bench.bench_step``: small encoder from the
synth trunk, L2 + attribute-net LPIPS-style + attribute-net ID, all W+ rows active):
- ``encoder``: encoder forward + backward of a dummy loss on the codes;
- ``generator``: the frozen generator's forward + backward to W+ (codes given);
- ``encoder+generator``: both, dummy loss on the image;
- ``perceptual`` / ``identity``: each image loss forward + backward to a fixed image;
- ``full``: encoder → generator → the image losses → backward (the step without the latent terms,
  the latent discriminator and the optimiser).
With ``--compile``, ``full`` is timed again with the generator, then the encoder too, then the image
losses too compiled (rounds interleaved; the first call of each, which compiles, reported apart).
Times are medians of ``--repeats`` calls.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_step_parts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="e4e", help="encoder method (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per piece (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of growing parts of the step")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from bench.bench_step import demo_generator_and_images, demo_inverter_and_losses
    from e4e import train as T

    g, x = demo_generator_and_images(8)
    inv, recon = demo_inverter_and_losses(a.method, g)
    model = T._CodesForward(inv)
    codes0 = model(x).detach().requires_grad_(True)
    y0 = x.flip(-1).clone().requires_grad_(True)

    def recon_total(y, target):
        return recon(y, target)[0]

    def full_with(enc, gen, rec):
        def run():
            rec(gen(enc(x), noise_mode="const"), x).backward()
        return run

    pieces = {
        "encoder": lambda: model(x).square().mean().backward(),
        "generator": lambda: inv.generate(codes0, noise_mode="const").square().mean().backward(),
        "encoder+generator": lambda: inv.generate(model(x), noise_mode="const").square().mean().backward(),
        "perceptual": lambda: recon.perceptual(y0, x).backward(),
        "identity": lambda: recon.identity(y0, x)[0].backward(),
        "full": full_with(model, inv.generate, recon_total),
    }
    rows = {k: round(_median_time(f, a.repeats), 4) for k, f in pieces.items()}
    for k, v in rows.items():
        print(f"{k:<20} {v:.4f} s", flush=True)
    out = {"eager": rows}
    if a.compile:
        cg, ce, cr = torch.compile(inv.generate), torch.compile(model), torch.compile(recon_total)
        variants = {"full eager": pieces["full"], "full, G compiled": full_with(model, cg, recon_total),
                    "full, G+E compiled": full_with(ce, cg, recon_total),
                    "full, G+E+losses compiled": full_with(ce, cg, cr)}
        first = {}
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            first[k] = round(time.perf_counter() - t, 1)
        rounds = [{k: round(_median_time(f, a.repeats), 4) for k, f in variants.items()} for _ in range(2)]
        for r, times in enumerate(rounds):
            base = times["full eager"]
            for k, v in times.items():
                print(f"round {r}: {k:<26} {v:.4f} s  ({base / v:.2f}x; first call {first[k]} s)", flush=True)
        out.update(first_call_s=first, rounds=rounds)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
