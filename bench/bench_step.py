"""The demo's encoder training step through the real trainer (``e4e.train.train``), fp32 against
the opt-in speed-ups, measured side by side in one process (rounds interleaved), plus the accuracy
of bf16 against fp32 on one fixed batch.

    python -m bench.bench_step [--method e4e] [--steps 30] [--rounds 2] [--threads 1]
        [--variants fp32 bf16 compile bf16+compile] [--json out.json]
    python -m bench.bench_step --profile [--steps 12]      # where the fp32 step's operator time goes

Config: the synth demo member (``experiments/configs/synth.yaml`` + the method's file, batch 8, the
small encoder preset, the pretrained synth trunk; L2 + the attribute-net LPIPS-style term + the
attribute-net identity term + the method's latent terms; progressive off so every W+ row is active,
the steady state). Images: the shipped generator's samples. Per variant and round: the median of the
trainer's per-step times (``sec_per_step_median``: encoder forward/backward, latent-D step,
optimiser step) and the first step's time (``compile``'s warm-up lands there). ``ratio`` = fp32
median / variant median in the same round. Accuracy: the loss and the encoder's gradient of one
batch from one initial state under fp32 and bf16 autocast (relative L2 difference and cosine).
``--profile``: the fp32 variant once under ``torch.profiler``; the operators' self time grouped into
convolutions (forward and backward), element-wise arithmetic, matrix products and the rest, then the
top operators.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from e4e import config as C

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
VARIANTS = {"fp32": [], "bf16": ["precision=bf16"], "compile": ["compile=true"],
            "bf16+compile": ["precision=bf16", "compile=true"]}


def demo_config(method: str, steps: int, out: Path, extra=()):
    return C.build_config([CONFIGS / "synth.yaml", CONFIGS / f"{method}.yaml"], [
        f"out_dir={out}", "batch_size=8", f"max_steps={steps}", "log_every=100000", "val_every=100000",
        "image_every=100000", "ckpt_every=100000", "progress=false", "model.encoder.small=true",
        "model.trunk_init=synth", "progressive.enabled=false", *extra])


def run_variant(method, variant, steps, images, generator, tmp: Path, i: int) -> dict:
    from e4e.train import train

    cfg = demo_config(method, steps, tmp / f"{variant}-{i}", VARIANTS[variant])
    s = train(cfg, generator=generator, train_set=torch.utils.data.TensorDataset(images), val_set=None,
              tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    return {"median": s["sec_per_step_median"], "first": s["sec_first_step"]}


def demo_generator_and_images(n: int):
    """The shipped synth generator (frozen) and ``n`` of its samples (z seed 1), the benchmarks' batch."""
    from e4e.checkpoints import load_generator
    from e4e.train import SYNTH_GENERATOR

    g = load_generator(SYNTH_GENERATOR).eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(1))
        images = g.sample(z, noise_mode="const").clamp(-1, 1)
    return g, images


def demo_inverter_and_losses(method: str, generator):
    """The demo member's inverter (seed 0, every W+ row active) and its image losses, outside the trainer."""
    from e4e import losses as L
    from e4e import train as T

    cfg = demo_config(method, 1, Path(tempfile.gettempdir()) / "unused")
    torch.manual_seed(0)
    latent_avg = generator.latent_avg
    inv = T._build_inverter(cfg, generator, latent_avg.reshape(-1, latent_avg.shape[-1])[:1], 64)
    T.set_stage(inv, generator.n_latent - 1)
    return inv, L.ReconstructionLoss.from_config(cfg.loss, "domain", "cpu")


def bf16_accuracy(method: str, generator, images) -> dict:
    """Loss and encoder gradient of one batch, fp32 vs bf16 autocast, from the same initial state."""
    from e4e import train as T

    inv, recon = demo_inverter_and_losses(method, generator)
    x = images[:8]
    out = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        inv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            codes = T._CodesForward(inv)(x)
            y = inv.generate(codes, noise_mode="const")
        loss, _ = recon(y.float(), x)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for n, p in inv.named_parameters() if p.grad is not None])
        out[name] = (loss.item(), grad.clone())
    (l32, g32), (l16, g16) = out["fp32"], out["bf16"]
    return {"loss_fp32": l32, "loss_bf16": l16, "loss_rel_diff": abs(l16 - l32) / abs(l32),
            "grad_rel_l2": float((g16 - g32).norm() / g32.norm()),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))}


# operator name (without "aten::") -> group, for the profile's summary; everything else is "other"
OP_GROUPS = {
    "convolution": ("convolution_backward", "mkldnn_convolution", "_convolution", "convolution",
                    "_slow_conv2d_forward", "_slow_conv2d_backward", "conv2d", "conv_transpose2d"),
    "element-wise": ("mul", "mul_", "add", "add_", "sub", "div", "div_", "leaky_relu", "leaky_relu_backward",
                     "pow", "sqrt", "rsqrt", "addcdiv_", "addcmul_", "lerp_", "neg", "clamp", "where"),
    "matrix product": ("mm", "addmm", "bmm", "linear", "matmul"),
    "memory (copy/fill/alloc)": ("copy_", "fill_", "zero_", "empty", "empty_strided", "_to_copy", "clone",
                                 "contiguous", "cat", "stack"),
}


def op_shares(self_us: dict) -> dict:
    """{operator: self microseconds} -> {group: share of the total}, groups of ``OP_GROUPS`` + "other"."""
    group_of = {op: g for g, ops in OP_GROUPS.items() for op in ops}
    total = sum(self_us.values())
    shares = {g: 0.0 for g in [*OP_GROUPS, "other"]}
    for op, us in self_us.items():
        shares[group_of.get(op.removeprefix("aten::"), "other")] += us / total if total else 0.0
    return shares


def profile_step(method: str, steps: int, images, generator, top: int = 15) -> dict:
    """Train the fp32 variant ``steps`` steps under the profiler; grouped shares and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp, profile(activities=[ProfilerActivity.CPU]) as prof:
        s = run_variant(method, "fp32", steps, images, generator, Path(tmp), 0)
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    ranked = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
    return {"s_per_step": s["median"], "shares": op_shares(ops), "total_self_s": sum(ops.values()) / 1e6,
            "top": [{"op": k, "self_s": v / 1e6} for k, v in ranked]}


def print_profile(res: dict):
    print(f"fp32 step under the profiler: {res['s_per_step']:.4f} s/step (median); "
          f"operators' self time {res['total_self_s']:.2f} s in all")
    print("| group | share of operator self time |\n|---|---|")
    for g, share in res["shares"].items():
        print(f"| {g} | {100 * share:.1f} % |")
    print("| operator | self s | share |\n|---|---|---|")
    for t in res["top"]:
        print(f"| {t['op']} | {t['self_s']:.3f} | {100 * t['self_s'] / res['total_self_s']:.1f} % |")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="e4e", help="encoder method (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="training steps per variant and round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, as a demo member (default: %(default)s)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="variants; fp32 is always run (default: all)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--profile", action="store_true",
                   help="profile the fp32 step instead (--steps steps, one run; default: off)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    g, images = demo_generator_and_images(64)
    if a.profile:
        res = profile_step(a.method, a.steps, images, g)
        print_profile(res)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return res
    variants = ["fp32"] + [v for v in a.variants if v != "fp32"]
    rows = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for v in variants:
                rows[v].append(run_variant(a.method, v, a.steps, images, g, Path(tmp), r))
                print(json.dumps({"round": r, "variant": v, **rows[v][-1]}), flush=True)
    table = []
    for v in variants:
        med = [x["median"] for x in rows[v]]
        ratio = [f["median"] / x["median"] for f, x in zip(rows["fp32"], rows[v])]
        table.append({"variant": v, "s_per_step": round(statistics.median(med), 4),
                      "first_step_s": round(max(x["first"] for x in rows[v]), 2),
                      "speedup_vs_fp32": round(statistics.median(ratio), 3)})
    acc = bf16_accuracy(a.method, g, images) if "bf16" in " ".join(variants) else {}
    meta = {"method": a.method, "steps": a.steps, "rounds": a.rounds, "threads": a.threads, "batch": 8,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}
    print("| variant | s/step (median) | first step (s) | speed-up vs fp32 (same round) |")
    print("|---|---|---|---|")
    for t in table:
        print(f"| {t['variant']} | {t['s_per_step']} | {t['first_step_s']} | {t['speedup_vs_fp32']}x |")
    if acc:
        print("bf16 vs fp32 on one batch:", json.dumps({k: round(v, 6) for k, v in acc.items()}))
    print(json.dumps(meta))
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "table": table, "rounds": rows, "bf16_accuracy": acc}, indent=1))
    return table


if __name__ == "__main__":
    main()
