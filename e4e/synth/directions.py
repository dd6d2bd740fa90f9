"""Editing directions for the synth generator (DESIGN.md §4), saved in the official file formats.

- InterFaceGAN (Shen et al., CVPR 2020): ``n`` seeded samples w = mapping(z) are rendered with constant
  noise, labelled by the attribute network, and a linear SVM on the top/bottom 2% of each attribute
  gives a unit normal ``[1, D]`` -> ``<attr>.pt`` (like the official FFHQ ``age.pt``/``smile.pt``).
  ``pose.pt`` is the yaw direction under the FFHQ file name.
- GANSpace (Härkönen et al., NeurIPS 2020): PCA of W -> ``ganspace_pca.pt`` ``{'comp','mean','std'}``.
- SeFa (Shen & Zhou, CVPR 2021): eigenvectors of all modulation weights -> ``sefa.pt``
  ``{'directions': [D, D], 'eigenvalues': [D], 'rows': [...]}``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

DEFAULT_DIR = Path(__file__).resolve().parent / "assets" / "directions"
FFHQ_NAMES = {"yaw": "pose"}


@torch.no_grad()
def label_samples(generator, attrnet, n: int, seed: int = 0, batch: int = 250, progress: bool = True):
    """(w [n, D], attributes [n, K]) of ``n`` seeded generator samples."""
    g = torch.Generator().manual_seed(seed)
    ws, attrs = [], []
    for i in tqdm(range(0, n, batch), desc="label samples", disable=not progress):
        z = torch.randn(min(batch, n - i), generator.style_dim, generator=g)
        w = generator.mapping(z)
        ws.append(w)
        attrs.append(attrnet(generator.synthesis(w, noise_mode="const").clamp(-1, 1)))
    return torch.cat(ws), torch.cat(attrs)


def build_directions(generator, attrnet, out_dir: str | Path = DEFAULT_DIR, n: int = 10_000, seed: int = 0,
                     attributes: tuple[str, ...] | None = None, progress: bool = True) -> dict:
    from e4e import editing

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    names = list(attributes or attrnet.ATTRIBUTES)
    ws, attrs = label_samples(generator, attrnet, n, seed, progress=progress)
    report = {"n_samples": n, "seed": seed, "interfacegan": {}}
    for name in names:
        k = list(attrnet.ATTRIBUTES).index(name)
        d, fit = editing.fit_boundary(ws, attrs[:, k], kind="svm", ratio=0.02, seed=seed)
        torch.save(d, out_dir / f"{name}.pt")
        if name in FFHQ_NAMES:
            torch.save(d, out_dir / f"{FFHQ_NAMES[name]}.pt")
        # How well the direction separates the attribute on these samples: correlation of projections.
        proj = (ws - ws.mean(0)) @ d.reshape(-1)
        corr = torch.corrcoef(torch.stack([proj, attrs[:, k]]))[0, 1].item()
        report["interfacegan"][name] = {"corr_projection_attribute": round(corr, 4),
                                        "attr_std": round(attrs[:, k].std().item(), 4), "fit": fit}
    torch.save(editing.ganspace_pca(generator, n=min(n * 5, 100_000), seed=seed), out_dir / "ganspace_pca.pt")
    vecs, vals, rows = editing.sefa_directions(generator, "all")
    torch.save({"directions": vecs, "eigenvalues": vals, "rows": torch.tensor(rows)}, out_dir / "sefa.pt")
    report["wall_s"] = round(time.time() - t0, 1)
    (out_dir / "directions.json").write_text(json.dumps(report, indent=2))
    return report


def _run(args) -> None:
    from e4e.checkpoints import load_generator
    from e4e.synth.attrnet import load_attrnet

    torch.set_num_threads(args.threads)
    gen = load_generator(args.generator).eval()
    report = build_directions(gen, load_attrnet(args.attrnet), args.out, n=args.n, seed=args.seed)
    print(json.dumps(report, indent=2))


def add_cli(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("directions", help="fit InterFaceGAN / GANSpace / SeFa directions for synth",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--generator", default=str(Path(__file__).resolve().parent / "assets" / "generator_synth64.pt"))
    p.add_argument("--attrnet", default=None, help="attribute net weights (default: the committed one)")
    p.add_argument("--out", default=str(DEFAULT_DIR))
    p.add_argument("--n", type=int, default=10_000, help="labelled generator samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=_run)
