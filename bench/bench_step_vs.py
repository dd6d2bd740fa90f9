"""The demo's e4e training step of this checkout against an earlier commit's, side by side in one run.

    python -m bench.bench_step_vs [--ref 509c68b] [--steps 30] [--rounds 3] [--threads 1]
        [--variants ref:fp32 this:fp32 this:compile] [--json out.json]

``ref`` is checked out into a temporary git worktree (``--ref-path`` uses an existing checkout
instead). Each (variant, round) is one fresh process whose ``PYTHONPATH`` is that code's root, so
each version runs its own config, trainer, losses and models; both train the same frozen generator
(this checkout's shipped synth file, loaded by each version's own loader) on the same 64 of its
samples. The config is the synth demo's e4e member (batch 8, the small encoder preset, L2 + the
attribute-net LPIPS-style and identity terms, delta-reg, latent D), progressive off so every W+ row
is active. Per run: the trainer's median per-step time and its first step (``compile``'s warm-up).
``speed-up`` = the ref's median / the variant's median in the same round; rounds are interleaved, so
a machine that gets busier shifts every variant of a round alike.

The default ref, 509c68b, is the code the speed issue measured (2026-12-01: before any of its work).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "e4e" / "synth" / "assets" / "generator_synth64.pt"
FLAGS = {"fp32": [], "compile": ["compile=true"], "bf16": ["precision=bf16"],
         "bf16+compile": ["precision=bf16", "compile=true"]}


def worker(args) -> dict:
    """Runs inside the code under test (its root on PYTHONPATH): only APIs both versions have."""
    import torch

    from e4e import config as C
    from e4e.checkpoints import load_generator
    from e4e.train import train

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    g = load_generator(str(GENERATOR)).eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.randn(64, g.style_dim, generator=torch.Generator().manual_seed(1))
        images = g.sample(z, noise_mode="const").clamp(-1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = C.build_config([root / "experiments" / "configs" / "synth.yaml", root / "experiments" / "configs" / "e4e.yaml"], [
            f"out_dir={tmp}/run", "batch_size=8", f"max_steps={args.steps}", "log_every=100000",
            "val_every=100000", "image_every=100000", "ckpt_every=100000", "progress=false",
            "model.encoder.small=true", "progressive.enabled=false", *FLAGS[args.flag]])
        s = train(cfg, generator=g, train_set=torch.utils.data.TensorDataset(images), val_set=None,
                  tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    return {"median": s["sec_per_step_median"], "first": s.get("sec_first_step")}


def run_one(code_root: Path, flag: str, steps: int, threads: int) -> dict:
    from bench.checkouts import run_worker

    return run_worker(code_root, __file__, ["--root", str(code_root), "--flag", flag, "--steps", str(steps),
                                            "--threads", str(threads)], what=flag)


def main(argv: list[str] | None = None) -> int:
    from e4e.cli import HelpFormatter

    ap = argparse.ArgumentParser(prog="python -m bench.bench_step_vs", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--ref", default="509c68b", help="git revision to compare against")
    ap.add_argument("--ref-path", default="", help="an existing checkout of the reference (instead of --ref)")
    ap.add_argument("--steps", type=int, default=30, help="training steps per run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (a demo member uses 1)")
    ap.add_argument("--variants", nargs="+", default=["ref:fp32", "this:fp32", "this:compile"],
                    help="<ref|this>:<fp32|compile|bf16|bf16+compile>; the first ref variant is the baseline")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", default="", help=argparse.SUPPRESS)
    ap.add_argument("--flag", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    for v in args.variants:
        who, _, flag = v.partition(":")
        if who not in ("ref", "this") or flag not in FLAGS:
            ap.error(f"variant {v!r}: expected <ref|this>:<{'|'.join(FLAGS)}>")
    base = next((v for v in args.variants if v.startswith("ref:")), args.variants[0])
    from bench.checkouts import reference_checkout

    with reference_checkout(args.ref, args.ref_path) as ref_root:
        rounds = []
        for r in range(args.rounds):
            res = {}
            for v in args.variants:
                who, _, flag = v.partition(":")
                res[v] = run_one(ref_root if who == "ref" else ROOT, flag, args.steps, args.threads)
                print(f"round {r} {v}: {res[v]['median']:.4f} s/step (first {res[v]['first']})", flush=True)
            for v in args.variants:
                res[v]["speedup"] = res[base]["median"] / res[v]["median"]
            rounds.append(res)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s), "
          f"{args.steps} steps per run, ref {args.ref_path or args.ref}")
    print("| variant | s/step (median over rounds) | first step (s) | speed-up vs " + base + ", per round |")
    print("|---|---|---|---|")
    for v in args.variants:
        med = statistics.median(r[v]["median"] for r in rounds)
        first = "/".join(f"{r[v]['first']:.2f}" if r[v]["first"] is not None else "-" for r in rounds)
        print(f"| {v} | {med:.4f} | {first} | " + " / ".join(f"{r[v]['speedup']:.2f}" for r in rounds) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"ref": args.ref_path or args.ref, "threads": args.threads,
                                               "steps": args.steps, "rounds": rounds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
