"""Paper-scale step times on one GPU, with nothing but torch (no MLflow, lpips or PyPI needed).

    python -m bench.gpu [--sizes 256 512 1024] [--batch 8] [--modes fp32 bf16 channels_last compiled]
        [--budget-s 420] [--json bench/gpu.json] [--results bench/RESULTS.md]

For each generator size and for e4e (Encoder4Editing) and pSp (GradualStyleEncoder), both at the
official widths (IR-SE-50 trunk, 256 px input; generator channel multiplier 2, 8 mapping layers),
one training step is: encoder forward on a batch of real-sized images, + latent_avg, generator
synthesis, the L2 loss + the identity-loss network (an IR-SE-50 Backbone on the 112 px face crop)
+ e4e's delta-regularisation term, backward through encoder and generator, an Adam step on the
encoder. Left out, and so not in the numbers: LPIPS-alex (a small AlexNet), the latent
discriminator step of e4e (a 4-layer MLP on 512-d codes), data loading. Weights are random: the
cost does not depend on them.

Modes: ``fp32``; ``bf16`` (autocast); ``channels_last`` (memory format of the conv nets, fp32);
``compiled`` (``torch.compile`` of the encoder and the generator, fp32; its warm-up is reported
apart). Per configuration: the median step time over ``--steps`` steps after ``--warmup``,
images/s, peak memory, and the projected wall time of the official schedules (faces 300k steps at
1024 px; cars 200k at 512 px; horse/church 256 px use the faces schedule length for reference).
Also: FID feature extraction throughput (pytorch-fid's InceptionV3 when importable, else skipped).
Configurations that would start after ``--budget-s`` are skipped and listed as such.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from e4e.models.backbones import Backbone
from e4e.models.encoders import Encoder4Editing, GradualStyleEncoder
from e4e.models.stylegan2 import Generator

SCHEDULES = {1024: ("faces (FFHQ), 300k steps", 300_000), 512: ("cars, 200k steps", 200_000),
             256: ("horse/church, 300k steps", 300_000)}
ENCODERS = {"e4e": Encoder4Editing, "psp": GradualStyleEncoder}
MODES = ("fp32", "bf16", "channels_last", "compiled")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(method: str, size: int, small: bool, device):
    kw = dict(channels={r: 8 for r in (4, 8, 16, 32, 64, 128, 256, 512, 1024)}) if small else {}
    g = Generator(size, 512 if not small else 32, n_mlp=8 if not small else 1, **kw).to(device)
    g.requires_grad_(False)
    enc_kw = dict(style_dim=g.style_dim, input_size=min(256, size), small=small)
    enc = ENCODERS[method](g.n_latent, **enc_kw).to(device)
    idnet = Backbone(112, num_layers=50, mode="ir_se", width=0.125 if small else 1.0).to(device).eval()
    idnet.requires_grad_(False)
    latent_avg = g.mean_latent(1000).detach()
    return g, enc, idnet, latent_avg


def make_step(method, g, enc, idnet, latent_avg, size, mode):
    opt = torch.optim.Adam(enc.parameters(), lr=1e-4)
    autocast = mode == "bf16"
    enc_f, syn_f = enc, g.synthesis
    if mode == "compiled":
        enc_f, syn_f = torch.compile(enc), torch.compile(g.synthesis)
    in_size = min(256, size)

    def step(x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            xin = F.interpolate(x, size=(in_size, in_size), mode="area") if x.shape[-1] != in_size else x
            codes = enc_f(xin) + latent_avg
            y = syn_f(codes, noise_mode="random")
            loss = F.mse_loss(y.float(), x)
            crop = F.interpolate(y[:, :, size // 8: size * 7 // 8, size // 8: size * 7 // 8], size=(112, 112),
                                 mode="area")
            loss = loss + 0.1 * (1 - F.cosine_similarity(idnet(crop).float(), idnet(F.interpolate(
                x, size=(112, 112), mode="area")).float().detach()).mean())
            if method == "e4e":
                loss = loss + 2e-4 * (codes[:, 1:] - codes[:, :1]).norm(dim=-1).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def measure(method, size, mode, batch, steps, warmup, small, device) -> dict:
    g, enc, idnet, latent_avg = build(method, size, small, device)
    if mode == "channels_last":  # the 4-d (conv) weights only: Module.to(memory_format=) rejects others
        for m in (g, enc, idnet):
            for p in m.parameters():
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    if mode == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    step = make_step(method, g, enc, idnet, latent_avg, size, mode)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(x)
    _sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(x)
        _sync(device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    label, n_steps = SCHEDULES.get(size, ("", 0))
    row = {"method": method, "size": size, "mode": mode, "batch": batch, "step_s": med,
           "images_per_s": batch / med, "warmup_s": warm_s,
           "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
           "schedule": label, "projected_hours": med * n_steps / 3600 if n_steps else None}
    del g, enc, idnet, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def fid_throughput(device, batch: int = 64, steps: int = 5) -> dict:
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError:
        return {"skipped": "pytorch_fid not importable on this machine"}
    net = InceptionV3([3], resize_input=True, normalize_input=False).to(device).eval()
    x = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1
    with torch.no_grad():
        net(x)
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            net(x)
        _sync(device)
    return {"images_per_s": batch * steps / (time.perf_counter() - t), "batch": batch, "input": 256}


def table(rows: list[dict]) -> str:
    lines = ["| method | size | mode | step (s) | images/s | peak GiB | warm-up (s) | projected schedule |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['method']} | {r['size']} | {r['mode']} | skipped: {r['skipped']} | | | | |")
            continue
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "—"
        proj = f"{r['projected_hours']:.1f} h ({r['schedule']})" if r["projected_hours"] else "—"
        lines.append(f"| {r['method']} | {r['size']} | {r['mode']} | {r['step_s']:.3f} | {r['images_per_s']:.1f} "
                     f"| {mem} | {r['warmup_s']:.1f} | {proj} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="generator sizes")
    ap.add_argument("--methods", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--batch", type=int, default=8, help="batch per step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip configurations starting after this")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument("--small", action="store_true", help="tiny networks (a CPU smoke run, not a measurement)")
    ap.add_argument("--json", default="bench/gpu.json", help="where the JSON goes")
    ap.add_argument("--results", default="", help="also append the table to this markdown file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.benchmark = True
    t_start, rows = time.perf_counter(), []
    for size in args.sizes:
        for method in args.methods:
            for mode in args.modes:
                if time.perf_counter() - t_start > args.budget_s:
                    rows.append({"method": method, "size": size, "mode": mode, "skipped": "time budget"})
                    continue
                try:
                    rows.append(measure(method, size, mode, args.batch, args.steps, args.warmup, args.small, device))
                except Exception as e:  # noqa: BLE001 - one failing mode (e.g. compile) must not end the run
                    rows.append({"method": method, "size": size, "mode": mode, "skipped": f"{type(e).__name__}: {e}"[:200]})
                print(json.dumps(rows[-1]), flush=True)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "small": args.small,
           "command": "python -m bench.gpu " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
           "rows": rows, "fid_features": fid_throughput(device) if not args.small else {"skipped": "--small"},
           "wall_s": time.perf_counter() - t_start}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    text = table(rows)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write(f"\n### GPU step times ({out['device']}, torch {out['torch']})\n\n`{out['command']}`\n\n{text}\n"
                    f"\nFID features: {json.dumps(out['fid_features'])}\n")
    return out


if __name__ == "__main__":
    main()
