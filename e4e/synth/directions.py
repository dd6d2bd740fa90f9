"""Editing directions for the synth generator (docs/design.md §4), saved in the official file formats.

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
from e4e.progress import track

DEFAULT_DIR = Path(__file__).resolve().parent / "assets" / "directions"
FFHQ_NAMES = {"yaw": "pose"}
QUALITY_STRENGTH, QUALITY_N = 12.0, 500  # the synth demo's edit strength; samples for the quality numbers
N_COMPONENTS_REPORTED = 5


@torch.no_grad()
def label_samples(generator, attrnet, n: int, seed: int = 0, batch: int = 250, progress: bool = True):
    """(w [n, D], attributes [n, K]) of ``n`` seeded generator samples."""
    g = torch.Generator().manual_seed(seed)
    ws, attrs = [], []
    for i in track(range(0, n, batch), "label samples", disable=not progress):
        z = torch.randn(min(batch, n - i), generator.style_dim, generator=g)
        w = generator.mapping(z)
        ws.append(w)
        attrs.append(attrnet(generator.synthesis(w, noise_mode="const").clamp(-1, 1)))
    return torch.cat(ws), torch.cat(attrs)


def rendered_std(n: int = 100_000, seed: int = 0) -> dict[str, float]:
    """Standard deviation of each ground-truth attribute under the renderer's law."""
    import numpy as np

    from e4e.synth.render import ATTRIBUTES, sample_attributes

    return dict(zip(ATTRIBUTES, sample_attributes(n, np.random.default_rng(seed)).std(0).tolist()))


@torch.no_grad()
def edit_quality(generator, attrnet, offset: torch.Tensor, strength: float, n: int = 500, seed: int = 1,
                 sd: dict[str, float] | None = None, batch: int = 250) -> dict:
    """Effect of the edit ``w_plus + strength * offset`` on ``n`` generator samples (z seed ``seed``,
    const noise), read by the attribute network, in units of the rendered SD of each attribute:
    ``delta_sd[attr]`` = mean change; ``abs_delta_sd`` = mean |change| (the leak measure)."""
    names = list(attrnet.ATTRIBUTES)
    sd = torch.tensor([(sd or rendered_std())[k] for k in names])
    g = torch.Generator().manual_seed(seed)
    deltas = []
    for i in range(0, n, batch):
        z = torch.randn(min(batch, n - i), generator.style_dim, generator=g)
        w = generator.mapping(z).unsqueeze(1).repeat(1, generator.n_latent, 1)
        a0 = attrnet(generator.synthesis(w, noise_mode="const").clamp(-1, 1))
        a1 = attrnet(generator.synthesis(w + strength * offset.to(w), noise_mode="const").clamp(-1, 1))
        deltas.append((a1 - a0) / sd)
    d = torch.cat(deltas)
    return {"strength": strength, "n": n,
            "delta_sd": {k: round(float(d[:, j].mean()), 4) for j, k in enumerate(names)},
            "abs_delta_sd": {k: round(float(d[:, j].abs().mean()), 4) for j, k in enumerate(names)}}


def _summary(q: dict, target: str | None = None) -> dict:
    """Gain (target's mean change, SD) and leak (mean |change| of the other attributes, SD); without a
    target the attribute that moves most is the target."""
    if target is None:
        target = max(q["delta_sd"], key=lambda k: abs(q["delta_sd"][k]))
    others = [v for k, v in q["abs_delta_sd"].items() if k != target]
    return {"target": target, "gain_sd": q["delta_sd"][target], "leak_sd": round(sum(others) / len(others), 4)}


def build_directions(generator, attrnet, out_dir: str | Path = DEFAULT_DIR, n: int = 10_000, seed: int = 0,
                     attributes: tuple[str, ...] | None = None, progress: bool = True) -> dict:
    from e4e import editing

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    names = list(attributes or attrnet.ATTRIBUTES)
    ws, attrs = label_samples(generator, attrnet, n, seed, progress=progress)
    report = {"n_samples": n, "seed": seed, "quality_protocol": (
        f"each direction applied at strength {QUALITY_STRENGTH} to {QUALITY_N} other generator samples (z seed "
        "seed + 1, const noise, all W+ rows); attribute-net readings; gain_sd = mean change of the target "
        "attribute, leak_sd = mean |change| of the other attributes, both in units of the attribute's SD under "
        "the renderer's law"), "interfacegan": {}}
    sd = rendered_std()
    for name in names:
        k = list(attrnet.ATTRIBUTES).index(name)
        d, fit = editing.fit_boundary(ws, attrs[:, k], kind="svm", ratio=0.02, seed=seed)
        torch.save(d, out_dir / f"{name}.pt")
        if name in FFHQ_NAMES:
            torch.save(d, out_dir / f"{FFHQ_NAMES[name]}.pt")
        # How well the direction separates the attribute on these samples: correlation of projections.
        proj = (ws - ws.mean(0)) @ d.reshape(-1)
        corr = torch.corrcoef(torch.stack([proj, attrs[:, k]]))[0, 1].item()
        q = edit_quality(generator, attrnet, d.reshape(1, 1, -1), QUALITY_STRENGTH, QUALITY_N, seed + 1, sd)
        report["interfacegan"][name] = {"corr_projection_attribute": round(corr, 4),
                                        "attr_std": round(attrs[:, k].std().item(), 4), "fit": fit,
                                        "quality": {**_summary(q, name), **q}}
    pca = editing.ganspace_pca(generator, n=min(n * 5, 100_000), seed=seed)
    torch.save(pca, out_dir / "ganspace_pca.pt")
    vecs, vals, rows = editing.sefa_directions(generator, "all")
    torch.save({"directions": vecs, "eigenvalues": vals, "rows": torch.tensor(rows)}, out_dir / "sefa.pt")
    # GANSpace / SeFa components are unnamed: report what the first few move, QUALITY_STRENGTH
    # standard deviations of W along each (GANSpace) or QUALITY_STRENGTH along the unit vector (SeFa)
    report["ganspace"], report["sefa"] = {}, {}
    for i in range(N_COMPONENTS_REPORTED):
        comp, std = pca["comp"][i].reshape(1, 1, -1), float(pca["std"][i])
        q = edit_quality(generator, attrnet, comp * std, QUALITY_STRENGTH, QUALITY_N, seed + 1, sd)
        report["ganspace"][f"pc{i}"] = {**_summary(q), "w_std_along": round(std, 4), **q}
        q = edit_quality(generator, attrnet, vecs[i].reshape(1, 1, -1), QUALITY_STRENGTH, QUALITY_N, seed + 1, sd)
        report["sefa"][f"eig{i}"] = {**_summary(q), **q}
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
