"""Editability metrics: image-space LEC (lec_img_, lec_feat_), edit realism (edit_fid_) and the
distance to W inside its principal subspace (latent_dist_w_pca<var>), on a tiny generator whose W
distribution is known."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from metrics import EvalContext, MetricUnavailable, get_metric
from metrics.latent import N_HOLDOUT, pca_reference, w_reference
from metrics.registry import InvertedBatch

STD = torch.logspace(0.5, -2.5, 12)  # W's standard deviations along its principal axes: 3.2 ... 0.003


class TanhGenerator(nn.Module):
    """G(w+) = tanh(A vec(w+)) at 16 px; mapping(z) = (z * STD) Q^T + 0.5: a Gaussian W whose principal
    axes are the columns of the orthogonal Q with the known standard deviations STD."""

    def __init__(self, n_latent=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_latent, self.style_dim, dim = n_latent, len(STD), n_latent * len(STD)
        self.Q = nn.Parameter(torch.linalg.qr(torch.randn(len(STD), len(STD), generator=g))[0], requires_grad=False)
        self.A = nn.Parameter(torch.randn(3 * 16 * 16, dim, generator=g) / (2 * dim ** 0.5), requires_grad=False)

    def mapping(self, z):
        return (z * STD.to(z)) @ self.Q.T + 0.5

    def synthesis(self, w_plus, noise_mode="const"):
        return torch.tanh(w_plus.flatten(1) @ self.A.T).view(-1, 3, 16, 16)


def _key(img: torch.Tensor) -> bytes:
    return img.detach().float().cpu().numpy().tobytes()


class TrueCodeInverter(nn.Module):
    """Identity inverter: returns the code each image was generated from (it remembers every
    ``generate``), plus ``noise`` times a fixed function of that code (per image, so batch-size free)."""

    def __init__(self, gen: TanhGenerator, noise: float = 0.0):
        super().__init__()
        self.decoder, self.noise, self.known, self.n_inverted = gen, noise, {}, 0

    def generate(self, w_plus, noise_mode="const"):
        y = self.decoder.synthesis(w_plus, noise_mode)
        self.known.update((_key(img), w) for img, w in zip(y, w_plus))
        return y

    def invert(self, x):
        w = torch.stack([self.known[_key(img)] for img in x])
        self.n_inverted += len(x)
        return w + self.noise * torch.sin(7 * w + 1)


def w_samples(gen: TanhGenerator, n: int, seed: int) -> torch.Tensor:
    """n fresh W samples as W+ codes [n, n_latent, D] (rows equal)."""
    z = torch.randn(n, gen.style_dim, generator=torch.Generator().manual_seed(seed))
    return gen.mapping(z).unsqueeze(1).repeat(1, gen.n_latent, 1)


def _setup(noise=0.0, n=10, bs=5, seed=3, **kw):
    """A context on n images generated from known W codes, with the direction 'ax1' (W's 2nd axis)."""
    gen = TanhGenerator()
    inv = TrueCodeInverter(gen, noise)
    x = inv.generate(w_samples(gen, n, seed))
    return EvalContext(inv, x, batch_size=bs, directions={"ax1": gen.Q[:, 1:2].T.clone()}, **kw)


def _with_codes(codes: torch.Tensor, **kw) -> EvalContext:
    """A context whose inversions are ``codes`` (images and reconstructions from the generator)."""
    gen = TanhGenerator()
    inv = TrueCodeInverter(gen)
    y = inv.generate(codes)
    ctx = EvalContext(inv, y, batch_size=len(codes), directions={"ax1": gen.Q[:, 1:2].T.clone()}, **kw)
    ctx.cache["inversions"] = [InvertedBatch(y, codes, y)]
    return ctx


# ---------------------------------------------------------------------------------------------
# image-space editing consistency
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lec_img_ax1_2", "lec_feat_ax1_2"])
def test_image_lec_zero_for_identity_inverter_positive_for_noisy(name):
    exact = get_metric(name)(_setup())
    assert len(exact.per_image[name]) == 10
    assert max(abs(v) for v in exact.per_image[name]) < 1e-5
    noisy = get_metric(name)(_setup(noise=0.3)).values[name]
    assert noisy > 1e-3 and noisy > 100 * max(abs(exact.values[name]), 1e-8)


def test_image_lec_shares_the_latent_cycle():
    ctx = _setup(noise=0.3)
    assert get_metric("lec_ax1_2")(ctx).values["lec_ax1_2"] > 0.1
    assert ctx.inverter.n_inverted == 20  # the images, then their edits
    get_metric("lec_img_ax1_2")(ctx)
    get_metric("lec_feat_ax1_2")(ctx)
    assert ctx.inverter.n_inverted == 20  # the cycled codes are reused: no edit is inverted again


def test_feature_metrics_unavailable_without_attrnet(tmp_path, monkeypatch):
    from e4e.synth import attrnet

    monkeypatch.setattr(attrnet, "DEFAULT_PATH", tmp_path / "missing.pt")
    for name in ("lec_feat_ax1_2", "edit_fid_ax1_1"):
        with pytest.raises(MetricUnavailable, match="attribute-network weights"):
            get_metric(name)(_setup(options={"fid_cache_dir": tmp_path}))
    with pytest.raises(MetricUnavailable, match="no identity network"):
        get_metric("lec_feat_ax1_2")(_setup(domain="nodomain"))


# ---------------------------------------------------------------------------------------------
# edit realism
# ---------------------------------------------------------------------------------------------
def test_edit_fid_off_manifold_codes_edit_less_realistically(tmp_path):
    gen = TanhGenerator()
    on = w_samples(gen, 64, seed=11)
    off = on + torch.randn(on.shape, generator=torch.Generator().manual_seed(12))  # W+ rows with independent noise
    opts = {"edit_fid_n_ref": 128, "fid_cache_dir": tmp_path}

    def fid(codes, strength):
        name = f"edit_fid_ax1_{strength}"
        return get_metric(name)(_with_codes(codes, options=opts)).values[name]

    fid_on, fid_off = fid(on, 1), fid(off, 1)
    assert 0 < fid_on and fid_off > 2 * fid_on, (fid_on, fid_off)
    # the edit is applied to the codes, not to the reference: a long step leaves W's range
    assert fid(on, 4) > 1.5 * fid(on, 0)


def test_edit_fid_reference_cached_on_disk_per_generator(tmp_path):
    opts = {"edit_fid_n_ref": 32, "fid_cache_dir": tmp_path}
    first = get_metric("edit_fid_ax1_1")(_setup(options=opts)).values
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert get_metric("edit_fid_ax1_1")(_setup(options=opts)).values == first  # read back from the file
    ctx = _setup(options=opts)
    ctx.inverter.decoder.A.data += 0.01  # another generator: another reference
    get_metric("edit_fid_ax1_1")(ctx)
    assert len(list(tmp_path.glob("*.pt"))) == 2


# ---------------------------------------------------------------------------------------------
# distance to W inside its principal subspace
# ---------------------------------------------------------------------------------------------
def _pca99(codes: torch.Tensor) -> dict[str, float]:
    res = get_metric("latent_dist_w_pca99")(_with_codes(codes, options={"latent_n_ref": 4000}))
    return {**res.values, "sd": float(np.std(res.per_image["latent_dist_w_pca99"])),
            "sd_resid": float(np.std(res.per_image["latent_dist_w_pca99_resid"]))}


def test_latent_dist_w_pca_held_out_w_scores_one():
    var = STD.double() ** 2
    expected_k = int((var.cumsum(0) / var.sum() < 0.99).sum()) + 1  # 4 (99.3%; 3 keep 97.7%)
    n = 2000
    v = _pca99(w_samples(TanhGenerator(), n, seed=21))
    assert v["latent_dist_w_pca99_k"] == expected_k
    # W is Gaussian: before normalisation a sample's distance is chi_k / sqrt(k)
    pca = pca_reference(w_reference(TanhGenerator(), 4000), 0.99)
    chi_mean = math.sqrt(2 / expected_k) * math.exp(math.lgamma((expected_k + 1) / 2) - math.lgamma(expected_k / 2))
    assert float(pca["inside_ref"]) == pytest.approx(chi_mean, abs=4 * v["sd"] * chi_mean / math.sqrt(N_HOLDOUT))
    # sampling error of a mean of n fresh samples, normalised by the mean of N_HOLDOUT held-out ones
    se = np.sqrt(1 / n + 1 / N_HOLDOUT)
    assert v["latent_dist_w_pca99"] == pytest.approx(1.0, abs=4 * v["sd"] * se)
    assert v["latent_dist_w_pca99_resid"] == pytest.approx(1.0, abs=4 * v["sd_resid"] * se)


def test_latent_dist_w_pca_off_manifold_codes_score_worse():
    gen = TanhGenerator()
    w = w_samples(gen, 200, seed=22)
    base = _pca99(w)
    step = _pca99(w + 1.0 * gen.Q[:, -1])  # a large step along W's lowest-variance axis (std 0.003)
    assert step["latent_dist_w_pca99_resid"] > 2.5 * base["latent_dist_w_pca99_resid"]
    rows = _pca99(w + torch.randn(w.shape, generator=torch.Generator().manual_seed(23)))  # independent row noise
    assert rows["latent_dist_w_pca99"] > 1.3 * base["latent_dist_w_pca99"]
    assert rows["latent_dist_w_pca99_resid"] > 3 * base["latent_dist_w_pca99_resid"]


def test_latent_dist_w_pca_ignores_small_offsets_the_whitened_distance_amplifies():
    gen = TanhGenerator()
    w = w_samples(gen, 200, seed=24)
    nudged = w + 0.02 * torch.randn(w.shape, generator=torch.Generator().manual_seed(25))
    metrics = lambda codes: {**get_metric("latent_dist_w")(_with_codes(codes, options={"latent_n_ref": 4000})).values,
                             **_pca99(codes)}  # noqa: E731
    before, after = metrics(w), metrics(nudged)
    assert after["latent_dist_w"] > 2 * before["latent_dist_w"]  # 0.02 is 6 stds of W's last axis
    for key in ("latent_dist_w_pca99", "latent_dist_w_pca99_resid"):
        assert after[key] == pytest.approx(before[key], abs=0.05)
    with pytest.raises(ValueError, match="percentage"):
        get_metric("latent_dist_w_pca100")(_with_codes(w))


# ---------------------------------------------------------------------------------------------
# batch-size independence
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lec_img_ax1_2", "lec_feat_ax1_2", "edit_fid_ax1_1", "latent_dist_w_pca99"])
def test_editing_metrics_batch_size_invariant(name, tmp_path):
    opts = {"edit_fid_n_ref": 32, "fid_cache_dir": tmp_path, "latent_n_ref": 500}
    r2 = get_metric(name)(_setup(noise=0.3, bs=2, options=opts))
    r5 = get_metric(name)(_setup(noise=0.3, bs=5, options=opts))
    # float32 convolutions give batch-size-dependent rounding of ~1e-7 (seen on one CPU, not another)
    assert r2.values == pytest.approx(r5.values, rel=1e-5, abs=1e-6)
    for key, vals in (r2.per_image or {}).items():
        np.testing.assert_allclose(vals, r5.per_image[key], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# recovering w from G(w)
# ---------------------------------------------------------------------------------------------
class MeanGuessInverter(TrueCodeInverter):
    """Ignores the image: every code is W's mean (the baseline w_recovery compares with)."""

    def invert(self, x):
        mu = self.decoder.mapping(torch.zeros(1, self.decoder.style_dim))  # = W's mean for this mapping
        return mu.unsqueeze(1).repeat(len(x), self.decoder.n_latent, 1)


def test_w_recovery_zero_for_the_true_code_one_for_the_mean_guess():
    gen = TanhGenerator()
    x = TrueCodeInverter(gen).generate(w_samples(gen, 4, 0))
    opts = {"latent_n_ref": 4000, "w_recovery_n": 24}
    exact = get_metric("w_recovery")(EvalContext(TrueCodeInverter(gen), x, batch_size=5, options=opts)).values
    mean = get_metric("w_recovery")(EvalContext(MeanGuessInverter(gen), x, batch_size=5, options=opts)).values
    noisy = get_metric("w_recovery")(EvalContext(TrueCodeInverter(gen, 0.5), x, batch_size=5, options=opts)).values
    assert exact["w_recovery"] < 1e-6 and exact["w_recovery_mean_guess"] > 1
    assert mean["w_recovery"] == pytest.approx(1.0, abs=0.02)   # reference mean vs the true mean
    assert 0.05 < noisy["w_recovery"] < 1
    assert exact["w_recovery_l2"] == 0 and exact["w_recovery_full"] < 1e-6
    assert exact["w_recovery_l2_ratio"] == 0 and exact["w_recovery_l2_mean_guess"] > 0
    assert mean["w_recovery_l2"] == pytest.approx(mean["w_recovery_l2_mean_guess"], rel=0.05)  # ref vs true mean
    assert mean["w_recovery_l2_ratio"] == pytest.approx(1.0, abs=0.05)
    assert 0 < noisy["w_recovery_l2_ratio"] < mean["w_recovery_l2_ratio"]


class PartialGenerator(TanhGenerator):
    """A TanhGenerator whose image reads only the first ``m`` coordinates of every W+ row."""

    def __init__(self, m=4, **kw):
        super().__init__(**kw)
        self.m = m
        mask = (torch.arange(self.style_dim) < m).float().repeat(self.n_latent)
        self.A.data *= mask


class RelevantOnlyInverter(TrueCodeInverter):
    """Recovers the coordinates the image shows exactly and guesses W's mean for the others."""

    def invert(self, x):
        w = super().invert(x).clone()
        w[..., self.decoder.m:] = self.decoder.mapping(torch.zeros(1, self.decoder.style_dim))[0, self.decoder.m:]
        return w


def test_w_recovery_counts_only_the_directions_that_change_the_image():
    gen = PartialGenerator(m=4)
    x = TrueCodeInverter(gen).generate(w_samples(gen, 4, 0))
    opts = {"latent_n_ref": 4000, "w_recovery_n": 24}
    v = get_metric("w_recovery")(EvalContext(RelevantOnlyInverter(gen), x, batch_size=5, options=opts)).values
    assert v["w_recovery"] < 1e-4                      # everything the image shows is recovered ...
    assert v["w_recovery_full"] > 0.3                  # ... while the raw distance counts the unseen 8 dims
    wrong = get_metric("w_recovery")(EvalContext(MeanGuessInverter(gen), x, batch_size=5, options=opts)).values
    assert wrong["w_recovery"] == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------------------------------------------
# shared work: one context for every metric, references on disk; results bitwise unchanged
# ---------------------------------------------------------------------------------------------
def test_shared_context_and_disk_cache_change_no_value(tmp_path):
    from experiments.evaluate import evaluate

    names = ["lec_ax1_2", "lec_img_ax1_2", "lec_feat_ax1_2", "edit_fid_ax1_1", "latent_dist_w", "latent_dist_w_pca99",
             "w_recovery"]
    opts = {"edit_fid_n_ref": 32, "fid_cache_dir": tmp_path / "fid", "latent_n_ref": 500, "w_recovery_n": 6,
            "cache_dir": tmp_path / "cache"}

    def run(metric_names, **extra):
        ctx = _setup(noise=0.3, options={**opts, **extra})
        return evaluate(ctx.inverter, ctx.images, metric_names, batch_size=ctx.batch_size,
                        directions=ctx.directions, options=ctx.options)[:2]

    together = run(names)                                   # cold disk cache, one shared context
    assert list((tmp_path / "cache").glob("*/*.pt")), "the W reference and the image Gram go to disk"
    warm = run(names)                                       # read back from disk
    alone = [run([n], cache_dir="") for n in names]         # a fresh context per metric, no disk cache
    assert warm == together
    values = {k: v for vals, _ in alone for k, v in vals.items()}
    per_image = {k: v for _, per in alone for k, v in per.items()}
    assert values == together[0] and per_image == together[1]


# ---------------------------------------------------------------------------------------------
# LEC against its trivial baseline (constant code), without an edit, and in the Jacobian metric
# ---------------------------------------------------------------------------------------------
class ConstantInverter(TrueCodeInverter):
    """Ignores the image: one fixed code for every input."""

    def invert(self, x):
        c = torch.linspace(-1, 1, self.decoder.style_dim)
        return c.expand(len(x), self.decoder.n_latent, -1).clone()


class NullSpaceNoiseInverter(TrueCodeInverter):
    """The true code plus a per-image perturbation only in coordinates the image does not read."""

    def invert(self, x):
        w = super().invert(x)
        noise = torch.zeros_like(w)
        noise[..., self.decoder.m:] = torch.sin(11 * w[..., self.decoder.m:] + 2)
        return w + noise


def _lec_values(inv_cls, gen, names, n=6, **kw):
    inv = inv_cls(gen, **kw)
    x = inv.generate(w_samples(gen, n, 5))
    ctx = EvalContext(inv, x, batch_size=4, directions={"ax1": gen.Q[:, 1:2].T.clone()},
                      options={"w_recovery_jac_samples": 8})
    out = {}
    for name in names:
        out.update(get_metric(name)(ctx).values)
    return out


LEC_FAMILY = ["lec_ax1_2", "lec_ax1_0", "lec_ratio_ax1_2", "lec_excess_ax1_2", "lec_jac_ax1_2"]


def test_lec_constant_encoder_scores_its_closed_form_and_ratio_one():
    gen = TanhGenerator()
    v = _lec_values(ConstantInverter, gen, LEC_FAMILY)
    closed = 2 * math.sqrt(gen.n_latent)   # s * ||d|| * sqrt(K) for a unit direction on every row
    assert v["lec_ax1_2"] == pytest.approx(closed, rel=1e-5)
    assert v["lec_constant_ax1_2"] == pytest.approx(closed, rel=1e-6)
    assert v["lec_ratio_ax1_2"] == pytest.approx(1.0, rel=1e-5)
    assert v["lec_jac_ratio_ax1_2"] == pytest.approx(1.0, rel=1e-5)
    assert v["lec_ax1_0"] == pytest.approx(0.0, abs=1e-6)          # without an edit a constant is consistent
    assert v["lec_excess_ax1_2"] == pytest.approx(closed, rel=1e-5)


def test_lec_true_code_encoder_scores_zero_on_every_variant():
    v = _lec_values(TrueCodeInverter, TanhGenerator(), LEC_FAMILY)
    for key in ("lec_ax1_2", "lec_ax1_0", "lec_ratio_ax1_2", "lec_excess_ax1_2", "lec_jac_ax1_2", "lec_jac_ratio_ax1_2"):
        assert v[key] == pytest.approx(0.0, abs=1e-5), key


def test_lec_noisy_encoder_zero_strength_is_its_reinversion_error():
    v = _lec_values(TrueCodeInverter, TanhGenerator(), LEC_FAMILY, noise=0.3)
    assert v["lec_ax1_0"] > 0.1 and 0 < v["lec_ratio_ax1_2"] < 5
    assert v["lec_excess_ax1_2"] == pytest.approx(v["lec_ax1_2"] - v["lec_ax1_0"], abs=0.5)  # per-image filter


def test_lec_jacobian_ignores_noise_in_the_jacobian_null_space():
    gen = PartialGenerator(m=4)
    exact = _lec_values(TrueCodeInverter, gen, ["lec_ax1_2", "lec_jac_ax1_2"])
    null = _lec_values(NullSpaceNoiseInverter, gen, ["lec_ax1_2", "lec_jac_ax1_2"])
    assert null["lec_ax1_2"] > 0.5 and exact["lec_ax1_2"] < 1e-5     # the raw LEC counts the unseen noise ...
    assert null["lec_jac_ax1_2"] == pytest.approx(exact["lec_jac_ax1_2"], abs=1e-6)   # ... the Jacobian LEC does not
    assert null["lec_jac_constant_ax1_2"] > 0


def test_lec_ratio_refuses_zero_strength():
    with pytest.raises(ValueError, match="non-zero"):
        _lec_values(TrueCodeInverter, TanhGenerator(), ["lec_ratio_ax1_0"])


def test_latent_offsets_zero_for_w_codes_and_scaled_by_w_spread():
    gen = TanhGenerator()
    codes = w_samples(gen, 6, 1)
    v = get_metric("latent_offsets")(_with_codes(codes, options={"latent_n_ref": 2000})).values
    assert v["latent_offset"] == 0 and v["latent_w_spread"] > 0
    shifted = codes.clone()
    shifted[:, 2] += torch.full((gen.style_dim,), 1.0) / math.sqrt(gen.style_dim) * v["latent_w_spread"]
    s = get_metric("latent_offsets")(_with_codes(shifted, options={"latent_n_ref": 2000})).values
    assert s["latent_offset_row2"] == pytest.approx(1.0, rel=1e-5) and s["latent_offset_row1"] == 0


def test_cached_edits_hold_no_autograd_graph():
    """Edited inversions are cached for the whole evaluation: with a graph attached each would keep
    the generator's activations alive (a 500-image evaluation grew past 12 GB)."""
    from metrics.lec import edited_inversions

    ctx = _setup()
    ctx.inverter.decoder.A.requires_grad_(True)
    assert not any(t.requires_grad for t in edited_inversions(ctx, "ax1", "2"))
