"""Wall time of one member's evaluation (the synth demo's metric list) with a cold and a warm
reference cache, and its values as JSON (to compare two versions of the code value for value).

    python -m bench.bench_eval --checkpoint runs/.../best_inverter.pt --data data/synth/test --n 32 \\
        --cache /tmp/evalcache --out /tmp/eval.json
    # the same against an older commit, side by side:
    git worktree add /tmp/old <sha> && (cd /tmp/old && PYTHONPATH=/tmp/old python <this file> ... --out /tmp/old.json)

Runs once with an empty cache folder (``--cache``, removed first), once more with the folder it
filled; prints both times.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

import torch

METRICS = ["l2", "msssim", "fid_domain", "swd", "id_domain", "latent_dist_w", "latent_dist_w_pca95", "lec_smile_10",
           "lec_img_smile_10", "lec_feat_smile_10", "edit_fid_smile_10", "edit_smile", "edit_age", "edit_yaw",
           "w_recovery"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default="data/synth/test")
    p.add_argument("--n", type=int, default=32, help="test images (default: %(default)s)")
    p.add_argument("--cache", default="/tmp/e4e_bench_eval_cache", help="cache folder, emptied first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the values (warm run) as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from e4e.checkpoints import load_inverter
    from experiments.evaluate import evaluate, load_images

    inv = load_inverter(a.checkpoint).eval()
    x = load_images(a.data, "synth", a.n)
    shutil.rmtree(a.cache, ignore_errors=True)
    times = []
    for label in ("cold", "warm"):
        t = time.perf_counter()
        with torch.no_grad():
            values, per_image, unavailable = evaluate(
                inv, x, METRICS, batch_size=8, domain="synth", data_path=a.data, seed=0, edit_n_ref=64,
                edit_strength=10, cache_dir=a.cache, fid_cache_dir=f"{a.cache}/fid")
        times.append(time.perf_counter() - t)
        print(f"{label} cache: {times[-1]:.1f} s", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"values": values, "per_image": per_image, "unavailable": unavailable}, f, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
