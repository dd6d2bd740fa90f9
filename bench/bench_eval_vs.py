"""One member's evaluation by this checkout against an earlier commit's, side by side in one run.

    python -m bench.bench_eval_vs --checkpoint runs/.../best_inverter.pt --data data/synth/test
        [--ref 509c68b] [--n 32] [--rounds 2] [--threads 1] [--json out.json]

``ref`` is checked out into a temporary git worktree (``--ref-path`` uses an existing checkout).
Each (version, round) is one fresh process whose ``PYTHONPATH`` is that code's root; it loads the
same inverter checkpoint and the same test images with its own loaders, and takes the edit
directions from this checkout's synth assets (so both edit with the same vectors; the attribute
network file is the same in both). It evaluates the metrics both versions have (``METRICS``: the
list the speed issue timed) twice with the demo's options (strength 10, 64 edit reference samples): first with an empty cache folder ("cold":
the first member of a grid), then again with the folder the first call filled ("warm": every later
member). Prints both times per version and round, the ratio this ÷ ref in each round, and which of
the shared values agree.

The default ref, 509c68b, is the code the speed issue measured (2026-12-01, before its work).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECTIONS = ROOT / "e4e" / "synth" / "assets" / "directions"
METRICS = ["l2", "msssim", "fid_domain", "swd", "id_domain", "latent_dist_w", "lec_smile_10", "edit_smile",
           "edit_age", "edit_yaw"]


def worker(args) -> dict:
    """Runs inside the code under test (its root on PYTHONPATH): only APIs both versions have."""
    import torch

    from e4e.checkpoints import load_inverter
    from e4e.editing import load_direction
    from experiments.evaluate import evaluate, load_images

    torch.set_num_threads(args.threads)
    inv = load_inverter(args.checkpoint).eval()
    x = load_images(args.data, "synth", args.n)
    directions = {a: load_direction(str(DIRECTIONS / f"{a}.pt")) for a in ("smile", "age", "yaw")}
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["E4E_CACHE"] = cache  # nothing read from or left in the user's cache
        for label in ("cold", "warm"):
            t = time.perf_counter()
            with torch.no_grad():
                values, _, unavailable = evaluate(
                    inv, x, METRICS, batch_size=8, domain="synth", data_path=args.data, seed=0,
                    directions=directions, edit_strength=10, edit_n_ref=64, cache_dir=cache, fid_cache_dir=f"{cache}/fid")
            out[label] = time.perf_counter() - t
    out["values"] = {k: float(v) for k, v in values.items()}
    out["unavailable"] = sorted(unavailable)
    return out


def run_one(code_root: Path, args) -> dict:
    from bench.checkouts import run_worker

    return run_worker(code_root, __file__, ["--checkpoint", str(Path(args.checkpoint).resolve()),
                                            "--data", str(Path(args.data).resolve()), "--n", str(args.n),
                                            "--threads", str(args.threads)])


def compare_values(ref: dict, this: dict, rtol: float = 1e-6) -> tuple[list[str], list[str]]:
    """(equal, different) among the value names both versions report."""
    equal, different = [], []
    for k in sorted(set(ref) & set(this)):
        a, b = ref[k], this[k]
        same = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= rtol * max(1.0, abs(a), abs(b))
        (equal if same else different).append(k)
    return equal, different


def main(argv: list[str] | None = None) -> int:
    from e4e.cli import HelpFormatter

    ap = argparse.ArgumentParser(prog="python -m bench.bench_eval_vs", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="an inverter checkpoint both versions can load")
    ap.add_argument("--data", default="data/synth/test", help="test image folder")
    ap.add_argument("--n", type=int, default=32, help="test images")
    ap.add_argument("--ref", default="509c68b", help="git revision to compare against")
    ap.add_argument("--ref-path", default="", help="an existing checkout of the reference (instead of --ref)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (a demo member uses 1)")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    for what, path in (("checkpoint", args.checkpoint), ("test image folder", args.data)):
        if not Path(path).exists():
            print(f"error: {what} {path} not found", file=sys.stderr)
            return 2
    from bench.checkouts import reference_checkout

    with reference_checkout(args.ref, args.ref_path) as ref_root:
        rounds = []
        for r in range(args.rounds):
            res = {who: run_one(root, args) for who, root in (("ref", ref_root), ("this", ROOT))}
            for who in ("ref", "this"):
                print(f"round {r} {who}: cold {res[who]['cold']:.1f} s, warm {res[who]['warm']:.1f} s", flush=True)
            rounds.append(res)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s), "
          f"{args.n} images, ref {args.ref_path or args.ref}, metrics {','.join(METRICS)}")
    print("| cache | ref s (median) | this s (median) | this ÷ ref, per round |")
    print("|---|---|---|---|")
    for label in ("cold", "warm"):
        ratios = " / ".join(f"{r['this'][label] / r['ref'][label]:.3f}" for r in rounds)
        print(f"| {label} | {statistics.median(r['ref'][label] for r in rounds):.1f} | "
              f"{statistics.median(r['this'][label] for r in rounds):.1f} | {ratios} |")
    equal, different = compare_values(rounds[0]["ref"]["values"], rounds[0]["this"]["values"])
    print(f"\nshared values equal (rtol 1e-6): {len(equal)}; different: {len(different)}"
          + (f" ({', '.join(different)})" if different else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"ref": args.ref_path or args.ref, "threads": args.threads, "n": args.n,
                                               "rounds": rounds, "equal": equal, "different": different},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
