"""Throughput of the networks e4e trains and evaluates (not a test; numbers go in the closing note).

    python -m bench.bench_models --sizes 64 256 [1024] [--batch 8] [--threads 2] [--device cpu|cuda]
        [--backward] [--channels-last] [--bf16]
    python -m bench.bench_models --layers      # per-layer table behind the default's choice

* generator synthesis (official channel table, channel_multiplier 2, const noise) per resolution,
  with the default modulated conv (``fused=None``: per layer, whichever of the two below suits its
  shape), activation modulation (modulate activations, demodulate outputs: ``fused=False``) and the
  straightforward rosinality reference (per-sample weights, grouped conv: ``fused=True``);
* encoder forward+backward (official IR-SE-50 architectures; ``n_latent = 2 log2(size) - 2``,
  input ``min(size, 256)`` as the official encoders resize to 256), optionally channels-last;
* on CUDA, ``--bf16`` runs under bfloat16 autocast.

Images per second are best-of ``--repeats`` timed calls after ``--warmup`` calls.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch

from e4e.models.encoders import build_encoder
from e4e.models.stylegan2 import Generator, ModulatedConv2d


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def set_fused(module, fused: bool):
    for m in module.modules():
        if isinstance(m, ModulatedConv2d):
            m.fused = fused


def bench_generator(size, args, device, autocast):
    g = Generator(size).to(device).eval().requires_grad_(False)
    w = torch.randn(args.batch, g.n_latent, g.style_dim, device=device)
    rows = []
    for name, fused in (("auto (default)", None), ("modulate activations", False), ("grouped reference", True)):
        set_fused(g, fused)

        def run():
            with torch.no_grad(), autocast():
                g.synthesis(w)

        dt = timeit(run, device, args.warmup, args.repeats)
        rows.append(("G synthesis", size, name, dt, args.batch / dt))
        if args.backward:
            def run_bwd():
                wi = w.clone().requires_grad_(True)  # what encoder training does: gradients to W+
                with autocast():
                    out = g.synthesis(wi)
                out.float().square().mean().backward()

            dt = timeit(run_bwd, device, args.warmup, args.repeats)
            rows.append(("G fwd+bwd (W+)", size, name, dt, args.batch / dt))
    return rows


# (in_channels, out_channels, resolution, upsample): the shapes of the official generators' layers
LAYERS = [(512, 512, 32, False), (512, 512, 64, False), (256, 256, 64, False), (256, 256, 128, False),
          (128, 128, 256, False), (64, 64, 512, False), (32, 32, 1024, False), (128, 128, 32, False),
          (32, 32, 64, False), (256, 128, 128, True), (64, 32, 512, True)]


def bench_layers(args, device):
    """One ModulatedConv2d per shape, forward: activation modulation vs grouped (what ``auto`` picks)."""
    print(f"{'layer':<32} {'act ms':>9} {'grouped ms':>11} {'act/grouped':>12}  auto picks")
    for cin, cout, res, up in LAYERS:
        m = ModulatedConv2d(cin, cout, 3, 512, upsample=up).to(device).eval().requires_grad_(False)
        x = torch.randn(args.batch, cin, res, res, device=device)
        s = torch.randn(args.batch, 512, device=device)
        t = {}
        for fused in (False, True):
            m.fused = fused

            def run():
                with torch.no_grad():
                    m(x, s)

            t[fused] = timeit(run, device, args.warmup, args.repeats)
        auto = "grouped" if res * res >= ModulatedConv2d.AUTO_PIXELS_PER_CHANNEL * cin else "activations"
        name = f"{cin}->{cout} @ {res}px{' up' if up else ''}"
        print(f"{name:<32} {t[False] * 1e3:9.1f} {t[True] * 1e3:11.1f} {t[False] / t[True]:12.2f}  {auto}",
              flush=True)


def bench_encoder(size, method, args, device, autocast):
    n_latent = 2 * int(math.log2(size)) - 2
    inp = min(size, 256)
    enc = build_encoder(method, n_latent=n_latent, input_size=inp,
                        input_nc=6 if method.startswith("restyle") else 3).to(device).train()
    x = torch.randn(args.batch, 6 if method.startswith("restyle") else 3, inp, inp, device=device)
    rows = []
    for layout in ("contiguous", "channels_last") if args.channels_last else ("contiguous",):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        enc = enc.to(memory_format=fmt)
        xi = x.contiguous(memory_format=fmt)

        def run():
            with autocast():
                out = enc(xi)
            out.float().square().mean().backward()
            enc.zero_grad(set_to_none=True)

        dt = timeit(run, device, args.warmup, args.repeats)
        rows.append((f"{method} fwd+bwd", size, f"{layout}, input {inp}", dt, args.batch / dt))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoders", nargs="*", default=["e4e"], help="e4e psp w_encoder restyle_e4e restyle_psp")
    ap.add_argument("--skip-generator", action="store_true")
    ap.add_argument("--channels-last", action="store_true", help="also time the encoders in channels-last")
    ap.add_argument("--backward", action="store_true", help="also time synthesis forward+backward (grad to W+)")
    ap.add_argument("--layers", action="store_true", help="only the per-layer modulated-conv table")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch}"
          f"{', bf16 autocast' if args.bf16 else ''}")
    if args.layers:
        bench_layers(args, device)
        return
    print(f"{'what':<18} {'size':>5}  {'variant':<28} {'s/batch':>9} {'img/s':>8}")
    for size in args.sizes:
        rows = [] if args.skip_generator else bench_generator(size, args, device, autocast)
        for m in args.encoders:
            rows += bench_encoder(size, m, args, device, autocast)
        for what, s, variant, dt, ips in rows:
            print(f"{what:<18} {s:>5}  {variant:<28} {dt:>9.3f} {ips:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
