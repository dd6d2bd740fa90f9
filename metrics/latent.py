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
evaluation size), are inverted; ``w_recovery_dist`` is the mean over images and W+ rows of ||w_hat_i - w||,
``w_recovery_mean_guess`` the mean of ||w_avg - w|| (guessing W's mean for every image), and
``w_recovery`` their ratio: 0 = the true code recovered, 1 = no better than the mean guess. It asks
whether an encoder inverts its own generator, which the realism gap does not affect.
"""
from __future__ import annotations

import torch

from metrics.registry import EvalContext, MetricResult, register_metric

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
    n_ref = _n_ref(ctx)
    return ctx.cached(f"w_reference:{n_ref}:{ctx.seed}", lambda: w_reference(ctx.generator, n_ref, ctx.seed))


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


@register_metric("w_recovery", needs=("generator",))
def w_recovery(ctx: EvalContext) -> MetricResult:
    """How close the inverted codes of generator samples G(w) come to their true w, vs W's mean."""
    from metrics.registry import resize_like

    gen, n = ctx.generator, int(ctx.option("w_recovery_n", 32))
    mu = _reference(ctx)["mu"].float()
    z = torch.randn(n, gen.style_dim, generator=torch.Generator().manual_seed(ctx.seed + 1))
    dist, guess = [], []
    for zc in z.split(ctx.batch_size):
        with torch.no_grad():
            w = gen.mapping(zc.to(ctx.device))
            x = resize_like(ctx.inverter.generate(w.unsqueeze(1).repeat(1, gen.n_latent, 1)), ctx.image_hw)
        codes = ctx.inverter.invert(x).detach().float().cpu()
        w = w.float().cpu()
        dist.append((codes - w[:, None]).norm(dim=-1).mean(1))
        guess.append((mu - w).norm(dim=-1))
    d, g = torch.cat(dist).mean().item(), torch.cat(guess).mean().item()
    return MetricResult({"w_recovery": d / g, "w_recovery_dist": d, "w_recovery_mean_guess": g})
