"""Images per second of every metric on this CPU (metrics/, issue 5 closing note).

    python bench/bench_metrics.py [--n 64] [--batch 8] [--threads 2] [--out bench/metrics.json]

Two settings:
- ``synth64``: the synth architecture (64 px StyleGAN2 with the synth channel table, style_dim 512,
  4 mapping layers) inverted by a small e4e encoder. Weights are random: only the cost is measured,
  which does not depend on them. The inversion is timed once ("invert"); every metric is then timed
  on the cached inversions (what the evaluation does), so LEC / edit include their own extra
  generator and encoder passes. The attribute net is the committed one when present, else a
  randomly initialised one (timing only).
- ``img256``: distortion / SWD / dlib identity at the paper's 256 px evaluation size, with a
  pass-through "inverter" (reconstruction = blurred input), so only the metric itself is timed.
Metrics whose pretrained files are absent are listed as unavailable.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(F.interpolate(torch.randn(n, 3, size // 8, size // 8, generator=g) * 1.5, size=size,
                                    mode="bilinear", align_corners=False))


class PassThrough(torch.nn.Module):
    """invert = identity; generate = 3x3 blur (a stand-in reconstruction)."""

    def invert(self, x):
        return x

    def generate(self, w, noise_mode="const"):
        return F.avg_pool2d(w, 3, 1, 1)


def _attrnet_file(tmp: Path) -> tuple[Path | None, str]:
    from e4e.synth import attrnet

    if attrnet.DEFAULT_PATH.is_file():
        return None, "committed"
    torch.manual_seed(0)
    net = attrnet.AttrNet()
    path = tmp / "attrnet.pt"
    torch.save({"config": {"n_attr": len(attrnet.ATTRIBUTES), "feat_dim": net.fc.out_features, "size": net.size},
                "state_dict": net.state_dict(), "attributes": list(attrnet.ATTRIBUTES)}, path)
    attrnet.DEFAULT_PATH = path  # this process only
    return path, "random (timing only)"


def time_metrics(ctx, names) -> dict:
    from metrics import MetricUnavailable, get_metric

    out = {}
    for name in names:
        t = time.perf_counter()
        try:
            with torch.no_grad():
                get_metric(name)(ctx)
        except MetricUnavailable as exc:
            out[name] = {"unavailable": exc.reason.splitlines()[0][:120]}
            continue
        dt = time.perf_counter() - t
        out[name] = {"seconds": round(dt, 3), "img_per_s": round(ctx.n_images / dt, 2)}
        print(f"  {name:<22} {out[name]}", flush=True)
    return out


def bench_synth(n: int, batch: int) -> dict:
    from e4e.inverters.encoder import E4EInverter
    from e4e.models.stylegan2 import Generator
    from e4e.synth.gan import SYNTH_CHANNELS
    from metrics import EvalContext

    torch.manual_seed(0)
    gen = Generator(64, 512, 4, channels=SYNTH_CHANNELS).eval()
    inv = E4EInverter(gen, gen.mean_latent(2000).expand(gen.n_latent, -1), small=True).eval()
    d = F.normalize(torch.randn(1, 512), dim=1)
    ctx = EvalContext(inv, smooth_images(n, 64), batch_size=batch, domain="synth",
                      directions={"bench": d, "smile": d}, options={"edit_n_ref": 64})
    t = time.perf_counter()
    ctx.inversions()
    dt = time.perf_counter() - t
    res = {"invert (e4e small, shared)": {"seconds": round(dt, 3), "img_per_s": round(n / dt, 2)}}
    print(f"  invert                 {res['invert (e4e small, shared)']}", flush=True)
    res.update(time_metrics(ctx, ["l2", "msssim", "swd", "latent_dist_w", "lec_bench_3", "fid_domain", "id_domain",
                                  "edit_smile", "lpips_alex", "fid_inception", "id_arcface", "id_moco"]))
    return res


def bench_256(n: int, batch: int) -> dict:
    from metrics import EvalContext

    x = smooth_images(n, 256)
    res = time_metrics(EvalContext(PassThrough(), x, batch_size=batch), ["l2", "msssim", "swd"])
    try:
        import skimage.data

        from e4e.align import Aligner

        face = torch.from_numpy(np.asarray(Aligner(256)(skimage.data.astronaut())).copy()).permute(2, 0, 1)
        faces = (face.float() / 127.5 - 1).unsqueeze(0).repeat(min(n, 16), 1, 1, 1)
        res.update(time_metrics(EvalContext(PassThrough(), faces, batch_size=batch), ["id_dlib"]))
    except ImportError as exc:
        res["id_dlib"] = {"unavailable": str(exc)}
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="images per set (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        _, attr_src = _attrnet_file(Path(tmp))
        print(f"synth64 (n={args.n}, batch={args.batch}, attribute net: {attr_src})", flush=True)
        results = {"synth64": bench_synth(args.n, args.batch), "attrnet": attr_src}
        print(f"img256 (n={args.n}, batch={args.batch})", flush=True)
        results["img256"] = bench_256(args.n, args.batch)
    results["threads"] = args.threads
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
