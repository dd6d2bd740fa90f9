"""Metrics: registry, distortion, FID/SWD, LEC, latent distance, editability, unavailable outcomes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metrics import EvalContext, MetricUnavailable, get_metric, list_metrics
from metrics import distortion, editability, lec, perception
from metrics.registry import InvertedBatch


# ---------------------------------------------------------------------------------------------
# a linear generator G(w) = A vec(w) and its exact inverse encoder
# ---------------------------------------------------------------------------------------------
class LinearGenerator(nn.Module):
    def __init__(self, n_latent=4, style_dim=8, size=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_latent, self.style_dim, self.size = n_latent, style_dim, size
        self.A = nn.Parameter(torch.randn(3 * size * size, n_latent * style_dim, generator=g) / 20, requires_grad=False)
        self.M = nn.Parameter(torch.randn(style_dim, style_dim, generator=g), requires_grad=False)

    def mapping(self, z):
        return z @ self.M + 0.5

    def synthesis(self, w_plus, noise_mode="const"):
        if w_plus.ndim == 2:
            w_plus = w_plus.unsqueeze(1).expand(-1, self.n_latent, -1)
        return (w_plus.flatten(1) @ self.A.T).view(-1, 3, self.size, self.size)


class LinearInverter(nn.Module):
    """invert = pseudo-inverse of the generator: invert(generate(w)) == w."""

    def __init__(self, gen: LinearGenerator, noise: float = 0.0):
        super().__init__()
        self.decoder = gen
        self.register_buffer("pinv", torch.linalg.pinv(gen.A.double()).float())
        self.noise = noise

    def invert(self, x):
        w = (x.flatten(1) @ self.pinv.T).view(-1, self.decoder.n_latent, self.decoder.style_dim)
        return w + self.noise * torch.tanh(x.flatten(1)[:, : w[0].numel()].view_as(w) * 10)

    def generate(self, w_plus, noise_mode="const"):
        return self.decoder.synthesis(w_plus, noise_mode)


def _images(n=12, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, 4, 4, generator=g)
    return torch.tanh(torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False))


def _ctx(inv, images, bs=4, **kw):
    return EvalContext(inv, images, batch_size=bs, **kw)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
def test_registry_names_and_patterns():
    names = list_metrics()
    for n in ("l2", "lpips_alex", "msssim", "id_arcface", "id_moco", "id_dlib", "id_domain", "fid_inception",
              "fid_domain", "swd", "latent_dist_w", "lec_<direction>_<strength>", "edit_<attr>"):
        assert n in names
    assert callable(get_metric("lec_age_3")) and callable(get_metric("lec_pose_-2.5"))
    assert callable(get_metric("edit_eye_open"))
    with pytest.raises(KeyError, match="valid: .*l2"):
        get_metric("not_a_metric")


# ---------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------
def test_frechet_distance_matches_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.RandomState(0)
    a = rng.randn(300, 32)
    b = rng.randn(300, 32) @ rng.randn(32, 32) * 0.3 + 0.7
    mine = perception.frechet_distance(*perception.feature_stats(a), *perception.feature_stats(b))
    ref = calculate_frechet_distance(*perception.feature_stats(a), *perception.feature_stats(b))
    assert abs(mine - ref) < 1e-6
    assert abs(perception.fid_from_features(a, a)) < 1e-6
    # fewer samples than dimensions: the exact low-rank path equals the D x D computation
    c, d = rng.randn(20, 64), rng.randn(30, 64) * 0.5 + 0.2
    low = perception.fid_from_features(c, d)
    full = calculate_frechet_distance(*perception.feature_stats(c), *perception.feature_stats(d))
    assert low == pytest.approx(full, rel=1e-6, abs=1e-6)
    assert abs(perception.fid_from_features(c, c)) < 1e-6


def test_gan_fid_and_metrics_fid_are_one_implementation():
    """e4e.synth.export's FID (fid_domain) and the metrics' FID agree on random features, and both equal
    the scipy sqrtm formula (the GAN trainer's former implementation)."""
    from scipy import linalg

    from e4e import stats
    from e4e.synth import export as gan

    assert gan.fid_from_features is perception.fid_from_features is stats.fid_from_features
    rng = np.random.RandomState(1)
    for n, m, d in [(300, 200, 32), (2000, 1500, 4), (20, 30, 64)]:
        a = rng.randn(n, d)
        b = rng.randn(m, d) @ rng.randn(d, d) * 0.3 + 0.7
        (mu1, s1), (mu2, s2) = perception.feature_stats(a), perception.feature_stats(b)
        ref = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2)
                    - 2 * np.trace(np.asarray(linalg.sqrtm(s1 @ s2)).real))
        got_gan = gan.fid_from_features(torch.from_numpy(a), torch.from_numpy(b))
        assert got_gan == perception.fid_from_features(a, b)
        assert got_gan == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_feature_extraction_batch_invariant():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1)).eval()
    x = _images(10)
    f1 = perception.extract_features(net, x, batch_size=1)
    f7 = perception.extract_features(net, x, batch_size=7)
    assert torch.allclose(f1, f7, atol=1e-6)


@pytest.fixture
def random_attrnet(tmp_path, monkeypatch):
    """A randomly initialised AttrNet file in the committed format (for invariance tests only)."""
    from e4e.synth import attrnet

    torch.manual_seed(0)
    net = attrnet.AttrNet(feat_dim=32)
    path = tmp_path / "attrnet.pt"
    torch.save({"config": {"n_attr": len(attrnet.ATTRIBUTES), "feat_dim": 32, "size": 64},
                "state_dict": net.state_dict(), "attributes": list(attrnet.ATTRIBUTES)}, path)
    monkeypatch.setattr(attrnet, "DEFAULT_PATH", path)
    return path


def test_domain_metrics_batch_invariant(random_attrnet):
    inv = LinearInverter(LinearGenerator(size=64), noise=0.1)
    x = _images(8, size=64)
    for name in ("fid_domain", "id_domain"):
        v1 = get_metric(name)(_ctx(inv, x, bs=3)).values[name]
        v2 = get_metric(name)(_ctx(inv, x, bs=8)).values[name]
        assert v1 == pytest.approx(v2, rel=1e-5, abs=1e-6)
    from e4e.identity import build_identity

    net = build_identity("domain")
    f = net(x)
    assert f.shape == (8, 32) and torch.allclose(f.norm(dim=1), torch.ones(8), atol=1e-5)
    maps = net.feature_maps(x)
    assert len(maps) >= 4 and all(m.ndim == 4 for m in maps)


def test_domain_metrics_unavailable_without_attrnet(tmp_path, monkeypatch):
    from e4e.synth import attrnet

    monkeypatch.setattr(attrnet, "DEFAULT_PATH", tmp_path / "missing.pt")
    inv = LinearInverter(LinearGenerator(size=64))
    for name in ("fid_domain", "id_domain", "edit_smile"):
        with pytest.raises(MetricUnavailable, match="attribute-network weights"):
            get_metric(name)(_ctx(inv, _images(2, size=64)))


# ---------------------------------------------------------------------------------------------
# SWD
# ---------------------------------------------------------------------------------------------
def test_swd_identical_zero_and_grows_with_noise():
    x = _images(16, size=32)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    shared = dict(shared=True, prefix="swd_shared")
    zero = perception.swd_sets(x.split(5), x.split(8), 16, (32, 32), **shared)
    assert set(zero) == {"swd_shared_32", "swd_shared_16", "swd_shared_avg"}
    assert zero["swd_shared_avg"] == pytest.approx(0.0, abs=1e-6)
    # ProGAN protocol: each set draws its own neighbourhoods, so even identical sets are apart
    indep = perception.swd_sets(x.split(5), x.split(8), 16, (32, 32))
    assert set(indep) == {"swd_32", "swd_16", "swd_avg"} and indep["swd_avg"] > 1.0
    for kw in (shared, {}):
        key = f"{kw.get('prefix', 'swd')}_avg"
        vals = [perception.swd_sets([x], [(x + s * noise).clamp(-1, 1)], 16, (32, 32), **kw)[key]
                for s in (0.05, 0.1, 0.2, 0.4)]
        assert all(b > a for a, b in zip(vals, vals[1:])), (kw, vals)
        again = perception.swd_sets([x], [(x + 0.1 * noise).clamp(-1, 1)], 16, (32, 32), **kw)[key]
        assert again == vals[1]  # deterministic


def _structured(n, seed, size=32):
    """A fixed spatial layout (like aligned faces) plus per-image noise."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    layout = torch.stack([torch.sin(4 * xx) * torch.cos(3 * yy), xx * yy, torch.cos(5 * (xx ** 2 + yy ** 2))])
    noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return (0.8 * layout + 0.15 * noise).clamp(-1, 1)


def test_swd_floor_independent_vs_shared_neighbourhoods():
    """Two sets from one distribution: sharing the neighbourhood positions removes their sampling
    noise, so ``swd_shared`` has the lower floor; ``swd`` (ProGAN) keeps it."""
    indep, shared = [], []
    for s in range(4):
        a, b = _structured(16, 2 * s), _structured(16, 2 * s + 1)
        indep.append(perception.swd_sets([a], [b], 16, (32, 32), seed=s)["swd_avg"])
        shared.append(perception.swd_sets([a], [b], 16, (32, 32), seed=s, shared=True,
                                          prefix="swd_shared")["swd_shared_avg"])
    assert max(shared) < min(indep), (shared, indep)
    assert np.mean(indep) > 1.1 * np.mean(shared)


def _np_pyr_down(img):
    from scipy.ndimage import convolve

    k = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    return convolve(img, k[None, None], mode="mirror")[:, :, ::2, ::2]


def _np_pyr_up(img):
    from scipy.ndimage import convolve

    k = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    up = np.zeros(img.shape[:2] + (img.shape[2] * 2, img.shape[3] * 2))
    up[:, :, ::2, ::2] = img
    return convolve(up, k[None, None] * 4.0, mode="mirror")


def test_laplacian_pyramid_matches_numpy_reference():
    x = np.random.RandomState(0).randint(0, 256, size=(2, 3, 64, 64)).astype(np.float64)
    ref = [x]
    for _ in range(2):
        ref.append(_np_pyr_down(ref[-1]))
        ref[-2] = ref[-2] - _np_pyr_up(ref[-1])
    mine = perception.laplacian_pyramid(torch.from_numpy(x), 3)
    assert [m.shape[-1] for m in mine] == [64, 32, 16]
    for a, b in zip(mine, ref):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-9)
    cv2 = pytest.importorskip("cv2")
    img = x[0].transpose(1, 2, 0).astype(np.float32)
    np.testing.assert_allclose(perception.pyr_down(torch.from_numpy(x[:1]))[0].permute(1, 2, 0).numpy(),
                               cv2.pyrDown(img), atol=1e-3)


def test_swd_batch_invariant_via_context():
    inv = LinearInverter(LinearGenerator(size=32), noise=0.05)
    x = _images(10, size=32)
    for name in ("swd", "swd_shared"):
        a = get_metric(name)(_ctx(inv, x, bs=3)).values
        b = get_metric(name)(_ctx(inv, x, bs=10)).values
        assert a == b and a[f"{name}_avg"] > 0
    assert get_metric("swd_shared")(_ctx(inv, x)).values["swd_shared_avg"] < a["swd_shared_avg"] + 1e-9


# ---------------------------------------------------------------------------------------------
# distortion
# ---------------------------------------------------------------------------------------------
def test_msssim_properties_and_single_scale_matches_skimage():
    x = (_images(3, size=64) + 1) / 2
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert torch.allclose(distortion.msssim_per_image(x, x), torch.ones(3), atol=1e-6)
    assert distortion.msssim_scales(64, 64) == 3 and distortion.msssim_scales(256, 256) == 5
    assert distortion.msssim_scales(192, 256) == 5 and distortion.msssim_scales(161, 161) == 5
    assert distortion.msssim_scales(160, 160) == 4
    assert (distortion.msssim_per_image(noisy, x) < 1).all()
    from skimage.metrics import structural_similarity

    mine = distortion.msssim_per_image(noisy, x, weights=(1.0,))
    ref = [structural_similarity(x[i].numpy(), noisy[i].numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(mine.numpy(), ref, atol=1e-5)


def _np_msssim(x, y, weights=(0.0448, 0.2856, 0.3001)):
    """MS-SSIM from its definition (Wang et al. 2003) for [C,H,W] images in [0,1] with even sizes:
    11x11 Gaussian windows (sigma 1.5) over all valid positions, 2x2 block means between scales."""
    from numpy.lib.stride_tricks import sliding_window_view

    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    w = np.array(weights) / np.sum(weights)
    out = np.ones(x.shape[0])
    for i, wi in enumerate(w):
        mean = lambda a: (sliding_window_view(a, (11, 11), axis=(1, 2)) * win).sum((-2, -1))  # noqa: E731
        mx, my = mean(x), mean(y)
        vx, vy, cxy = mean(x * x) - mx ** 2, mean(y * y) - my ** 2, mean(x * y) - mx * my
        cs = (2 * cxy + c2) / (vx + vy + c2)
        term = cs * (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) if i == len(w) - 1 else cs
        out *= np.maximum(term.mean((1, 2)), 0) ** wi
        block = lambda a: a.reshape(a.shape[0], a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean((2, 4))  # noqa: E731
        x, y = block(x), block(y)
    return out.mean()


def test_msssim_64px_three_scales_by_hand():
    """64 px: 3 scales, exponents renormalised. (a) constant images a, b: every contrast-structure
    term is 1 and the value is the luminance term ((2ab + C1) / (a^2 + b^2 + C1)) ** (w3 / (w1+w2+w3))
    with C1 = 0.01^2 (data range 1); the registered metric gets [-1, 1] images and must map them.
    (b) textured images against a numpy implementation of the definition."""
    a, b = 0.3, 0.5
    xa, xb = torch.full((1, 3, 64, 64), 2 * a - 1), torch.full((1, 3, 64, 64), 2 * b - 1)
    expected = ((2 * a * b + 1e-4) / (a * a + b * b + 1e-4)) ** (0.3001 / (0.0448 + 0.2856 + 0.3001))
    assert float(distortion.msssim_model_range(xa, xb)) == pytest.approx(expected, abs=1e-6)
    x = (_images(2, size=64) + 1) / 2
    y = (0.8 * x + 0.1 + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    mine = distortion.msssim_per_image(y, x)
    ref = [_np_msssim(x[i].double().numpy(), y[i].double().numpy()) for i in range(2)]
    np.testing.assert_allclose(mine.numpy(), ref, atol=2e-6)
    assert max(ref) < 0.99


@pytest.mark.parametrize("hw,atol", [((256, 256), 2e-5), ((192, 256), 2e-5), ((176, 240), 2e-5),
                                     ((161, 161), 2e-3)])
def test_msssim_matches_pytorch_msssim(hw, atol):
    """pytorch-msssim ``ms_ssim(data_range=1)`` (needs > 160 px); equal on even sizes. Odd sizes
    (161): it zero-pads before the 2x2 pooling, we repeat the border as the reference MATLAB code."""
    pms = pytest.importorskip("pytorch_msssim")
    g = torch.Generator().manual_seed(hw[0])
    x = torch.nn.functional.interpolate(torch.rand(3, 3, hw[0] // 8, hw[1] // 8, generator=g), size=hw,
                                        mode="bilinear", align_corners=False)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ref = pms.ms_ssim(y, x, data_range=1.0, size_average=False)
    np.testing.assert_allclose(distortion.msssim_per_image(y, x).numpy(), ref.numpy(), atol=atol)
    np.testing.assert_allclose(distortion.msssim_model_range(2 * y - 1, 2 * x - 1).numpy(), ref.numpy(), atol=atol)


@pytest.mark.parametrize("name", ["l2", "msssim"])
def test_distortion_batch_invariant(name):
    inv = LinearInverter(LinearGenerator(size=32), noise=0.1)
    x = _images(9, size=32)
    r1 = get_metric(name)(_ctx(inv, x, bs=1))
    r4 = get_metric(name)(_ctx(inv, x, bs=4))
    np.testing.assert_allclose(r1.per_image[name], r4.per_image[name], rtol=1e-5, atol=1e-7)
    assert len(r1.per_image[name]) == 9
    assert r1.values[name] == pytest.approx(float(np.mean(r1.per_image[name])), rel=1e-6)


def test_l2_zero_for_exact_inverter():
    gen = LinearGenerator()
    x = gen.synthesis(torch.randn(5, 4, 8))
    assert get_metric("l2")(_ctx(LinearInverter(gen), x)).values["l2"] < 1e-8


# ---------------------------------------------------------------------------------------------
# LEC
# ---------------------------------------------------------------------------------------------
def test_lec_zero_for_identity_pair_and_batch_invariant():
    gen = LinearGenerator()
    inv = LinearInverter(gen)
    x = _images(16)
    d = torch.nn.functional.normalize(torch.randn(1, 8), dim=1)
    res = get_metric("lec_age_3")(_ctx(inv, x, bs=5, directions={"age": d}))
    assert res.values["lec_age_3"] < 1e-3 and res.values["lec_official_age_3"] < 1e-3
    # a non-invertible encoder gives a positive LEC, the same for any evaluation batch size
    noisy = LinearInverter(gen, noise=0.3)
    r1 = get_metric("lec_age_3")(_ctx(noisy, x, bs=1, directions={"age": d}))
    r8 = get_metric("lec_age_3")(_ctx(noisy, x, bs=8, directions={"age": d}))
    np.testing.assert_allclose(r1.per_image["lec_age_3"], r8.per_image["lec_age_3"], rtol=1e-4, atol=1e-5)
    assert r1.values["lec_age_3"] > 0.01
    assert r1.values["lec_official_age_3"] == pytest.approx(r8.values["lec_official_age_3"], rel=1e-4)


def test_lec_aggregations():
    vals = np.arange(1, 101, dtype=float)
    assert lec.lec_per_image(vals) == pytest.approx(np.arange(2, 100).mean())
    per_image = np.concatenate([np.full(8, v) for v in range(1, 11)] + [np.array([1000.0, 1000.0])])
    # 10 full batches of 8 (the 2 trailing images are dropped), then the 1st/99th percentile filter
    assert lec.lec_official(per_image) == pytest.approx(np.arange(2, 10).mean())


def test_lec_unavailable_without_direction(tmp_path, monkeypatch):
    monkeypatch.setenv("E4E_DIRECTIONS", str(tmp_path))
    monkeypatch.setenv("E4E_WEIGHTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    inv = LinearInverter(LinearGenerator())
    with pytest.raises(MetricUnavailable, match="no editing direction"):
        get_metric("lec_nosuchdir_3")(_ctx(inv, _images(4), domain="nodomain"))


def test_lec_ganspace_spec():
    gen = LinearGenerator()
    from e4e.editing import ganspace_pca

    pca = ganspace_pca(gen, n=2000, n_components=4)
    spec = {"pca": pca, "index": 0, "start": 1, "end": 3}
    res = get_metric("lec_gs0_2")(_ctx(LinearInverter(gen), _images(8), directions={"gs0": spec}))
    assert res.values["lec_gs0_2"] < 1e-3


# ---------------------------------------------------------------------------------------------
# latent distance to W
# ---------------------------------------------------------------------------------------------
def test_latent_dist_w_in_and_out_of_distribution():
    gen = LinearGenerator()
    inv = LinearInverter(gen)
    z = torch.randn(32, 8, generator=torch.Generator().manual_seed(5))
    w = gen.mapping(z).unsqueeze(1).repeat(1, 4, 1)
    ctx = _ctx(inv, _images(32), options={"latent_n_ref": 4000})
    ctx.cache["inversions"] = [InvertedBatch(torch.zeros(32, 3, 16, 16), w, torch.zeros(32, 3, 16, 16))]
    v = get_metric("latent_dist_w")(ctx).values
    assert v["latent_dist_w"] == pytest.approx(v["latent_dist_w_ref"], rel=0.2)
    assert v["latent_dist_w_nn"] == pytest.approx(1.0, rel=0.3)
    assert v["latent_delta_mean"] == pytest.approx(0.0, abs=1e-6)
    ctx2 = _ctx(inv, _images(32), options={"latent_n_ref": 4000})
    ctx2.cache["inversions"] = [InvertedBatch(torch.zeros(32, 3, 16, 16), w + 3 * torch.randn(w.shape), torch.zeros(32, 3, 16, 16))]
    v2 = get_metric("latent_dist_w")(ctx2).values
    assert v2["latent_dist_w"] > 2 * v["latent_dist_w"] and v2["latent_delta_mean"] > 1


# ---------------------------------------------------------------------------------------------
# editability with a linear attribute probe
# ---------------------------------------------------------------------------------------------
class _LinearAttrNet(nn.Module):

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.R = torch.randn(3 * 16 * 16, 3, generator=g)
        self.F = torch.randn(3 * 16 * 16, 6, generator=g)

    def forward(self, x):
        return x.flatten(1) @ self.R

    def features(self, x):
        return x.flatten(1) @ self.F + 5.0


def test_edit_metric_exact_inverter_matches_reference(monkeypatch):
    probe = editability.AttributeProbe(_LinearAttrNet(), ("smile", "age", "pose"))
    monkeypatch.setattr(editability, "load_probe", lambda device="cpu": probe)
    gen = LinearGenerator()
    d = torch.nn.functional.normalize(torch.randn(1, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    ctx = _ctx(LinearInverter(gen), _images(8), directions={"smile": d}, options={"edit_n_ref": 32})
    res = get_metric("edit_smile")(ctx)
    v = res.values
    # everything is linear: the edit changes attributes by the same amount on inversions and samples
    assert v["edit_smile_gain"] == pytest.approx(1.0, rel=1e-4)
    assert v["edit_smile_leak"] == pytest.approx(v["edit_smile_leak_ref"], rel=1e-4)
    assert len(res.per_image["edit_smile_gain_raw"]) == 8
    with pytest.raises(KeyError, match="smile, age, pose"):
        get_metric("edit_hat")(ctx)


def test_edit_reference_readings_cached_on_disk_change_no_value(monkeypatch, tmp_path):
    probe = editability.AttributeProbe(_LinearAttrNet(), ("smile", "age", "pose"))
    monkeypatch.setattr(editability, "load_probe", lambda device="cpu": probe)
    gen = LinearGenerator()
    g = torch.Generator().manual_seed(2)
    dirs = {a: torch.nn.functional.normalize(torch.randn(1, 8, generator=g), dim=1) for a in ("smile", "age")}
    names = ["edit_smile", "edit_age"]

    def run(cache_dir, n_ref=96):
        ctx = _ctx(LinearInverter(gen, noise=0.2), _images(8), directions=dirs,
                   options={"edit_n_ref": n_ref, "edit_strength": 2.0, "cache_dir": cache_dir})
        out = [get_metric(n)(ctx) for n in names]
        return [(r.values, r.per_image) for r in out]

    cold = run(tmp_path / "c")
    files = sorted((tmp_path / "c" / "edit_reference").glob("*.pt"))
    assert len(files) == 3  # the unedited readings once, one edited set per direction
    assert run(tmp_path / "c") == cold  # read back from disk
    assert run("") == cold  # no disk cache at all
    assert run(tmp_path / "c", n_ref=32) != cold  # another reference count is another file
    assert len(list((tmp_path / "c" / "edit_reference").glob("*.pt"))) == 6
    files[0].write_bytes(b"truncated")  # an unreadable file is rebuilt
    assert run(tmp_path / "c") == cold


# ---------------------------------------------------------------------------------------------
# missing weights -> unavailable, never a number
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("E4E_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    import torch.hub

    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return tmp_path


@pytest.mark.parametrize("name", ["lpips_alex", "id_arcface", "fid_inception", "id_moco", "id_insightface"])
def test_missing_weights_unavailable(no_weights, name):
    inv = LinearInverter(LinearGenerator(size=32))
    with pytest.raises(MetricUnavailable) as exc:
        get_metric(name)(_ctx(inv, _images(2, size=32)))
    assert "missing pretrained file" in exc.value.reason


def test_evaluate_records_unavailable(no_weights):
    from experiments.evaluate import evaluate

    inv = LinearInverter(LinearGenerator(size=32), noise=0.1)
    values, per_image, unavailable = evaluate(inv, _images(6, size=32), ["l2", "msssim", "swd", "lpips_alex"],
                                              batch_size=4)
    assert "lpips_alex" in unavailable and not any(k.startswith("lpips") for k in values)
    assert {"l2", "msssim", "swd_avg", "swd_32", "swd_16"} <= set(values)
    assert len(per_image["l2"]) == 6


# ---------------------------------------------------------------------------------------------
# loaders of the pretrained networks, exercised with randomly initialised files in the official
# formats (the real files are not on this machine; random weights are for these tests only: the
# TEST-ONLY writers of tests/standins.py)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def weights_dir(no_weights):
    d = no_weights / "w"
    d.mkdir()
    return d


@pytest.mark.slow
def test_id_arcface_loads_official_key_layout(weights_dir):
    from standins import write_arcface

    write_arcface(weights_dir)
    inv = LinearInverter(LinearGenerator(size=32), noise=0.1)
    res = get_metric("id_arcface")(_ctx(inv, _images(1, size=32), bs=1))
    assert -1 <= res.values["id_arcface"] <= 1 and len(res.per_image["id_arcface"]) == 1


@pytest.mark.slow
def test_id_moco_loads_moco_checkpoint(weights_dir):
    from standins import write_moco

    write_moco(weights_dir)
    from e4e.identity import build_identity

    f = build_identity("moco")(_images(1, size=32))
    assert f.shape == (1, 2048) and torch.allclose(f.norm(dim=1), torch.ones(1), atol=1e-5)


@pytest.mark.slow
def test_fid_inception_local_weights_and_reference_cache(weights_dir, tmp_path):
    from standins import write_inception

    write_inception(weights_dir)
    inv = LinearInverter(LinearGenerator(size=32), noise=0.1)
    x = _images(2, size=32)
    cache = tmp_path / "fidcache"
    v1 = get_metric("fid_inception")(_ctx(inv, x, options={"fid_cache_dir": cache}, data_path="set-a")).values
    assert len(list(cache.glob("*.pt"))) == 1
    v2 = get_metric("fid_inception")(_ctx(inv, x, options={"fid_cache_dir": cache}, data_path="set-a")).values
    assert np.isfinite(v1["fid_inception"]) and v1 == v2


def test_lpips_alex_with_local_trunk(weights_dir):
    from standins import write_alexnet

    write_alexnet(weights_dir)
    inv = LinearInverter(LinearGenerator(size=32), noise=0.1)
    x = _images(3, size=32)
    r1 = get_metric("lpips_alex")(_ctx(inv, x, bs=1))
    r3 = get_metric("lpips_alex")(_ctx(inv, x, bs=3))
    np.testing.assert_allclose(r1.per_image["lpips_alex"], r3.per_image["lpips_alex"], rtol=1e-4, atol=1e-6)
    assert r1.values["lpips_alex"] > 0


def test_id_insightface_with_user_onnx(weights_dir):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("insightface")

    class Tiny(nn.Module):  # a stand-in recognition model with ArcFace's interface (112x112 -> 512)
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 8, 8), nn.Linear(8 * 14 * 14, 512)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    torch.manual_seed(0)
    torch.onnx.export(Tiny().eval(), torch.randn(1, 3, 112, 112), str(weights_dir / "w600k_r50.onnx"),
                      input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, dynamo=False)
    class PassThrough(nn.Module):
        def __init__(self, noise=0.0):
            super().__init__()
            self.noise = noise

        def invert(self, x):
            return x

        def generate(self, w, noise_mode="const"):
            return (w + self.noise * torch.sin(40 * w)).clamp(-1, 1)

    x = _images(3, size=64)
    same = get_metric("id_insightface")(_ctx(PassThrough(), x, bs=2))
    assert same.values["id_insightface"] == pytest.approx(1.0, abs=1e-4)
    noisy = get_metric("id_insightface")(_ctx(PassThrough(0.5), x, bs=2))
    assert noisy.values["id_insightface"] < same.values["id_insightface"]
