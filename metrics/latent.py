"""How far inverted codes lie from W: the quantity e4e's two principles control (paper §3-§4: keep
the W+ rows close to each other and to the distribution of the mapping network's outputs).

``latent_dist_w`` (needs the inverter's generator). Reference: ``n_ref`` (default 10 000,
``options['latent_n_ref']``) seeded samples w = mapping(z), their mean mu and covariance C.
- ``latent_dist_w``: for every row w_i of every inverted code, the Mahalanobis distance
  sqrt((w_i - mu)^T C^-1 (w_i - mu) / D) (PCA-whitened distance per dimension; eigenvalues floored at
  1e-8 of the largest), averaged over rows and images. ``latent_dist_w_ref`` is the same statistic
  for 1 000 held-out samples of W (the in-distribution level; about 1), and ``latent_dist_w_row<i>``
  the mean per row (rows far from W are the ones pSp-like encoders push out).
- ``latent_dist_w_nn``: Euclidean distance of each row to its nearest reference sample, divided by
  the mean nearest-neighbour distance of the held-out samples (1 = as close as W itself);
  ``latent_dist_w_nn_raw`` unnormalised.
- ``latent_delta_mean``: mean over images and rows i >= 1 of ||w_i - w_0|| (what L_d-reg penalises).
Per image: ``latent_dist_w`` and ``latent_dist_w_nn`` (means over rows).

``latent_dist_w_pca<var>`` (e.g. ``latent_dist_w_pca99``): the same reference, restricted to W's own
scale. The whitened distance above is dominated by W's lowest-variance directions (a code that is
close to W in every direction that matters scores far from it); here only the top-k principal
components of W count, k the fewest that keep ``var``% of its variance (``latent_dist_w_pca<var>_k``).
- ``latent_dist_w_pca<var>``: per row, sqrt(mean_j<=k (p_j^2 / lambda_j)) with p_j the projection of
  w_i - mu on component j, divided by the mean of the same over the held-out W samples, averaged
  over rows and images (W samples: 1; larger = less typical of W inside its principal subspace).
- ``latent_dist_w_pca<var>_resid``: per row, the norm of the residual of w_i - mu outside that
  subspace, divided by the held-out samples' mean residual norm (W samples: 1; codes pushed off the
  manifold, e.g. W+ rows with independent noise, score far above).
Per image: both (means over rows).

``w_recovery`` (needs only the inverter and its generator): ``options['w_recovery_n']`` (default 32)
generator samples x = G(w), w = mapping(z) (z seeded by ``ctx.seed + 1``, const noise, at the
evaluation size), are inverted, and the recovered rows w_hat_i compared with w. Most of W's extent need
not change the image (the synth generator's renderer reads a few z coordinates; the mapping spreads
the rest into W) and no encoder can recover what the image does not show, so the headline distance
weights every direction of W by how much it changes the image: ||d||_M = sqrt(d^T M d) with
M = E_w[J(w)^T J(w)], J = d G(w) / dw at the evaluation size (a Monte-Carlo estimate from
``w_recovery_jac_samples`` (16) samples w, z seeded by ``ctx.seed + 2``, and 64 Gaussian image probes
v each, E[J^T v v^T J] = J^T J; cached on disk keyed by the generator's weights).
- ``w_recovery``: mean over images and rows of ||w_hat_i - w||_M divided by the mean ||w_avg - w||_M
  (guessing W's mean): 0 = what the image shows of w recovered, 1 = no better than the mean guess.
- ``w_recovery_full``: the same ratio in plain Euclidean distance (``w_recovery_dist`` /
  ``w_recovery_mean_guess`` its parts), dominated by directions the image does not show.
- ``w_recovery_l2``: per-pixel MSE of G(w_hat) against G(w) (the reconstruction of those samples):
  a low value beside a ratio near 1 means distant codes give the same image (w is not identifiable).
  ``w_recovery_l2_mean_guess``: the same MSE for G(w_avg); ``w_recovery_l2_ratio`` = the two's quotient
  (0 = the samples reconstructed exactly, 1 = no better in pixels than the mean guess): whether the
  encoder inverts its own generator's range in image terms, whatever code it reaches it by.
It asks whether an encoder inverts its own generator, which the realism gap does not affect.
"""
from __future__ import annotations

import torch

from metrics.cache import cached_on_disk, generator_digest
from metrics.distortion import l2_per_image
from metrics.registry import EvalContext, MetricResult, register_metric, resize_like

N_HOLDOUT = 1000


@torch.no_grad()
def w_reference(generator, n_ref: int = 10_000, seed: int = 0, n_holdout: int = N_HOLDOUT) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dev = next(generator.parameters()).device
    z = torch.randn(n_ref + n_holdout, generator.style_dim, generator=g)
    w = torch.cat([generator.mapping(c.to(dev)).double().cpu() for c in z.split(4096)])
    bank, holdout = w[:n_ref], w[n_ref:]
    mu = bank.mean(0)
    vals, vecs = torch.linalg.eigh(torch.cov(bank.T))
    vals = vals.clamp_min(vals.max() * 1e-8)
    whiten = vecs / vals.sqrt()
    ref = {"mu": mu, "whiten": whiten, "bank": bank.float(), "vals": vals, "vecs": vecs, "holdout": holdout}
    ref["nn_ref"] = nn_distance(holdout, ref).mean()
    ref["maha_ref"] = mahalanobis(holdout, ref).mean()
    return ref


def mahalanobis(w: torch.Tensor, ref: dict) -> torch.Tensor:
    """Per-dimension whitened distance of w [..., D] to the reference mean -> [...]."""
    z = (w.double() - ref["mu"]) @ ref["whiten"]
    return z.pow(2).mean(-1).sqrt()


def nn_distance(w: torch.Tensor, ref: dict, chunk: int = 2048) -> torch.Tensor:
    flat = w.reshape(-1, w.shape[-1]).float()
    d = torch.cat([torch.cdist(c, ref["bank"]).min(1).values for c in flat.split(chunk)])
    return d.double().reshape(w.shape[:-1])


def _n_ref(ctx: EvalContext) -> int:
    return int(ctx.option("latent_n_ref", 10_000))


def _reference(ctx: EvalContext) -> dict:
    """The W reference, once per context and on disk (``metrics.cache``, keyed by the generator's weights)."""
    n_ref = _n_ref(ctx)
    desc = {"generator": generator_digest(ctx), "n_ref": n_ref, "seed": ctx.seed, "n_holdout": N_HOLDOUT}
    return ctx.cached(f"w_reference:{n_ref}:{ctx.seed}", lambda: cached_on_disk(
        ctx, "w_reference", desc, lambda: w_reference(ctx.generator, n_ref, ctx.seed)))


@register_metric("latent_dist_w", needs=("inversions", "generator"))
def latent_dist_w(ctx: EvalContext) -> MetricResult:
    """Distance of the inverted W+ rows to the W distribution (Mahalanobis and nearest neighbour)."""
    ref = _reference(ctx)
    codes = ctx.codes().double()  # [N, n_latent, D]
    maha = mahalanobis(codes, ref)  # [N, n_latent]
    nn = nn_distance(codes, ref) / ref["nn_ref"]
    delta = (codes[:, 1:] - codes[:, :1]).norm(dim=-1)
    values = {"latent_dist_w": float(maha.mean()), "latent_dist_w_ref": float(ref["maha_ref"]),
              "latent_dist_w_nn": float(nn.mean()), "latent_dist_w_nn_raw": float(nn.mean() * ref["nn_ref"]),
              "latent_delta_mean": float(delta.mean()) if delta.numel() else 0.0}
    values.update({f"latent_dist_w_row{i}": float(v) for i, v in enumerate(maha.mean(0))})
    per_image = {"latent_dist_w": maha.mean(1).tolist(), "latent_dist_w_nn": nn.mean(1).tolist()}
    return MetricResult(values, per_image)


@register_metric("latent_offsets", needs=("inversions", "generator"))
def latent_offsets(ctx: EvalContext) -> MetricResult:
    """Per W+ row i >= 1, the offset ||w_i - w_0|| (what L_d-reg penalises) against W's own spread, the
    mean ||w - mu|| of held-out W samples (1 = an offset as large as W's whole extent)."""
    ref = _reference(ctx)
    spread = float((ref["holdout"] - ref["mu"]).norm(dim=-1).mean())
    codes = ctx.codes().double()
    off = (codes[:, 1:] - codes[:, :1]).norm(dim=-1) / spread     # [N, n_latent - 1]
    values = {"latent_w_spread": spread, "latent_offset": float(off.mean()) if off.numel() else 0.0}
    values.update({f"latent_offset_row{i + 1}": float(v) for i, v in enumerate(off.mean(0))})
    return MetricResult(values, {"latent_offset": off.mean(1).tolist() if off.numel() else [0.0] * len(codes)})


# ---------------------------------------------------------------------------------------------
# distance inside W's principal subspace, and the residual outside it
# ---------------------------------------------------------------------------------------------
def pca_parts(w: torch.Tensor, pca: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of w [..., D]: the whitened RMS distance to the mean inside the principal subspace,
    and the norm of the residual outside it."""
    c = w.double() - pca["mu"]
    p = c @ pca["basis"]
    return (p / pca["scale"]).pow(2).mean(-1).sqrt(), (c - p @ pca["basis"].T).norm(dim=-1)


def pca_reference(ref: dict, fraction: float) -> dict:
    """The top-k principal subspace of the W reference, k the fewest components keeping ``fraction``
    of the variance, with the held-out samples' mean distance inside and residual outside it."""
    vals, vecs = ref["vals"].flip(0), ref["vecs"].flip(1)  # descending
    k = min(int((vals.cumsum(0) / vals.sum() < fraction).sum()) + 1, len(vals))
    pca = {"mu": ref["mu"], "basis": vecs[:, :k], "scale": vals[:k].sqrt(), "k": k}
    inside, resid = pca_parts(ref["holdout"], pca)
    pca.update(inside_ref=inside.mean(), resid_ref=resid.mean().clamp_min(1e-12))
    return pca


def _variance_fraction(var: str) -> float:
    frac = float(var) / 100
    if not 0 < frac < 1:
        raise ValueError(f"latent_dist_w_pca<var>: var is the percentage of W's variance kept, in (0, 100), got {var!r}")
    return frac


@register_metric("latent_dist_w_pca<var>", needs=("inversions", "generator"))
def latent_dist_w_pca(ctx: EvalContext, var: str) -> MetricResult:
    """Whitened distance to W inside its top principal components (<var>% of variance) and residual outside."""
    frac = _variance_fraction(var)
    ref = _reference(ctx)
    pca = ctx.cached(f"w_pca:{_n_ref(ctx)}:{ctx.seed}:{frac}", lambda: pca_reference(ref, frac))
    inside, resid = pca_parts(ctx.codes(), pca)  # [N, n_latent]
    inside, resid = (inside / pca["inside_ref"]).mean(1), (resid / pca["resid_ref"]).mean(1)
    p = f"latent_dist_w_pca{var}"
    values = {p: float(inside.mean()), f"{p}_resid": float(resid.mean()), f"{p}_k": float(pca["k"])}
    return MetricResult(values, {p: inside.tolist(), f"{p}_resid": resid.tolist()})


@torch.no_grad()
def _synthesise(ctx: EvalContext, w: torch.Tensor) -> torch.Tensor:
    gen = ctx.generator
    return resize_like(ctx.inverter.generate(w.unsqueeze(1).repeat(1, gen.n_latent, 1)), ctx.image_hw)


def image_jacobian_gram(ctx: EvalContext, n_samples: int, n_probes: int = 64) -> torch.Tensor:
    """Monte-Carlo estimate of E_w[J^T J] [D, D] (double), J = d resize(G(w)) / dw."""
    gen = ctx.generator
    g = torch.Generator().manual_seed(ctx.seed + 2)
    z = torch.randn(n_samples, gen.style_dim, generator=g)
    gram = torch.zeros(gen.style_dim, gen.style_dim, dtype=torch.float64)
    for zc in z:
        with torch.no_grad():
            w = gen.mapping(zc[None].to(ctx.device))
        rows = w.repeat(n_probes, 1).requires_grad_(True)
        with torch.enable_grad():
            y = resize_like(ctx.inverter.generate(rows.unsqueeze(1).repeat(1, gen.n_latent, 1)), ctx.image_hw)
            probes = torch.randn(y.shape, generator=g).to(y)
            (grad,) = torch.autograd.grad((y * probes).sum(), rows)
        grad = grad.double().cpu()
        gram += grad.T @ grad
    return gram / (n_samples * n_probes)


def image_gram(ctx: EvalContext) -> torch.Tensor:
    """E_w[J^T J] of the context's generator (``w_recovery``), once per context and on disk."""
    n_jac = int(ctx.option("w_recovery_jac_samples", 16))
    desc = {"generator": generator_digest(ctx), "n": n_jac, "seed": ctx.seed, "hw": list(ctx.image_hw)}
    build = lambda: {"gram": image_jacobian_gram(ctx, n_jac)}  # noqa: E731
    return ctx.cached(f"w_image_gram:{n_jac}:{ctx.seed}", lambda: cached_on_disk(ctx, "w_image_gram", desc, build))["gram"]


def _m_norm(d: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    d = d.double()
    return ((d @ gram) * d).sum(-1).clamp_min(0).sqrt()


@register_metric("w_recovery", needs=("generator",))
def w_recovery(ctx: EvalContext) -> MetricResult:
    """How close the inverted codes of generator samples G(w) come to their true w (distance weighted
    by the image Jacobian), relative to guessing W's mean."""
    gen, n = ctx.generator, int(ctx.option("w_recovery_n", 32))
    mu = _reference(ctx)["mu"].float()
    gram = image_gram(ctx)
    z = torch.randn(n, gen.style_dim, generator=torch.Generator().manual_seed(ctx.seed + 1))
    x_mu = _synthesise(ctx, mu[None].to(ctx.device)).float().cpu()  # the mean guess's image, once
    dist, guess, dist_m, guess_m, l2, l2_guess = [], [], [], [], [], []
    for zc in z.split(ctx.batch_size):
        with torch.no_grad():
            w = gen.mapping(zc.to(ctx.device))
            x = _synthesise(ctx, w)
        codes = ctx.inverter.invert(x).detach()
        with torch.no_grad():
            l2.append(l2_per_image(resize_like(ctx.inverter.generate(codes), ctx.image_hw).float().cpu(), x.float().cpu()))
            l2_guess.append(l2_per_image(x_mu.expand(len(x), -1, -1, -1), x.float().cpu()))
        codes, w = codes.float().cpu(), w.float().cpu()
        diff, off = codes - w[:, None], mu - w
        dist.append(diff.norm(dim=-1).mean(1))
        guess.append(off.norm(dim=-1))
        dist_m.append(_m_norm(diff, gram).mean(1))
        guess_m.append(_m_norm(off, gram))
    d, g = torch.cat(dist).mean().item(), torch.cat(guess).mean().item()
    dm, gm = torch.cat(dist_m).mean().item(), torch.cat(guess_m).mean().item()
    l2, l2_guess = torch.cat(l2).mean().item(), torch.cat(l2_guess).mean().item()
    return MetricResult({"w_recovery": dm / gm, "w_recovery_full": d / g, "w_recovery_dist": d,
                         "w_recovery_mean_guess": g, "w_recovery_l2": l2, "w_recovery_l2_mean_guess": l2_guess,
                         "w_recovery_l2_ratio": l2 / l2_guess})
