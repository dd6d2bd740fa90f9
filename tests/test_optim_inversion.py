"""Optimisation inversion baselines (NVlabs projector protocol) and the invert CLI."""
import math

import pytest
import torch

from baselines import optim as O
from e4e.inverters import INVERTERS, Inverter
from e4e.models.stylegan2 import Generator
from e4e.weights import WeightsMissingError, locate


def tiny_generator(seed=0):
    torch.manual_seed(seed)
    return Generator(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 8}).eval()


@pytest.fixture(scope="module")
def gen_and_targets():
    g = tiny_generator()
    with torch.no_grad():
        x = g.sample(torch.randn(3, 32, generator=torch.Generator().manual_seed(1)), noise_mode="const")
    return g, x


def test_registered():
    assert {"optim_w", "optim_wplus", "optim_from_encoder"} <= set(INVERTERS)


def test_lr_and_noise_schedules():
    lr = 0.1
    assert O.lr_schedule(0.0, lr) == 0.0
    assert O.lr_schedule(0.05, lr) == pytest.approx(lr)          # end of the 5% ramp-up
    assert O.lr_schedule(0.5, lr) == pytest.approx(lr)
    assert O.lr_schedule(0.875, lr) == pytest.approx(lr * 0.5)   # half-way through the 25% cosine ramp-down
    assert O.lr_schedule(1.0, lr) == pytest.approx(0.0)
    assert O.latent_noise_scale(0.0, 2.0) == pytest.approx(0.1)  # 0.05 * w_std
    assert O.latent_noise_scale(0.375, 2.0) == pytest.approx(0.1 * 0.25)
    assert O.latent_noise_scale(0.8, 2.0) == 0.0


def test_noise_regularizer_and_renormalisation():
    g = torch.Generator().manual_seed(0)
    white = [torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 4, 4, generator=g)]
    smooth = [torch.ones(2, 1, 16, 16), torch.ones(2, 1, 4, 4)]
    assert O.noise_regularizer(smooth) > 10 * O.noise_regularizer(white)
    # 16x16 map: levels 16 and 8 (stops at 8); 4x4 map: one level -> 3 levels x 2 shifts x 2 images of 1.0
    assert float(O.noise_regularizer(smooth)) == pytest.approx(12.0)
    maps = [torch.randn(2, 1, 8, 8) * 3 + 1]
    O.renormalize_noise(maps)
    assert maps[0].mean((1, 2, 3)).abs().max() < 1e-5
    assert torch.allclose(maps[0].square().mean((1, 2, 3)), torch.ones(2), atol=1e-4)


@pytest.mark.parametrize("method", ["optim_w", "optim_wplus"])
def test_projection_reduces_loss(method, gen_and_targets):
    g, x = gen_and_targets
    inv = INVERTERS[method](g, steps=40, w_avg_samples=2000, fallback="l2", perceptual="l2")
    assert inv.perceptual == "l2"
    with torch.no_grad():  # invert() enables grad itself
        start = ((inv.generate(inv.w_avg.reshape(1, 1, -1).expand(3, g.n_latent, -1)) - x) ** 2).mean()
        w = inv.invert(x)
        rec = ((inv.generate(w) - x) ** 2).mean()
    assert w.shape == (3, g.n_latent, g.style_dim) and not w.requires_grad
    assert inv.history[-1] < 0.7 * inv.history[0]
    assert rec < start
    if method == "optim_w":  # one code repeated over the rows
        assert torch.allclose(w, w[:, :1].expand_as(w))
    assert len(inv.noise) == g.num_layers and inv.noise[0].shape[0] == 3
    for n in inv.noise:  # renormalised every step
        assert n.mean().abs() < 1e-4 and (n.square().mean() - 1).abs() < 1e-3


def test_vgg_missing_falls_back_and_is_recorded(gen_and_targets, capsys):
    if locate("vgg16") is not None:
        pytest.skip("VGG16 weights present on this machine")
    g, _ = gen_and_targets
    inv = INVERTERS["optim_wplus"](g, steps=1, w_avg_samples=100, perceptual="lpips_vgg", fallback="l2")
    assert (inv.requested_perceptual, inv.perceptual) == ("lpips_vgg", "l2")
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "lpips_vgg" in warning[0] and "'l2'" in warning[0]
    with pytest.raises(WeightsMissingError):
        INVERTERS["optim_wplus"](g, steps=1, w_avg_samples=100, perceptual="lpips_vgg", fallback="none")


class _FixedEncoder(Inverter):
    """Stand-in encoder: a fixed perturbation of w_avg (the mechanics, not the quality)."""

    def __init__(self, g):
        super().__init__(g, g.mean_latent(1000))
        self.offset = torch.randn(g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(3)) * 0.3

    def invert(self, images):
        return (self.latent_avg + self.offset).unsqueeze(0).expand(images.shape[0], -1, -1).clone()


def test_optim_from_encoder_starts_at_the_encoder_and_improves(gen_and_targets):
    g, x = gen_and_targets
    enc = _FixedEncoder(g)
    inv = INVERTERS["optim_from_encoder"](g, encoder=enc, steps=30, w_avg_samples=1000, perceptual="l2",
                                          noise_strength=0.0)
    with torch.no_grad():
        enc_l2 = ((g.synthesis(enc.invert(x), noise_mode="const") - x) ** 2).mean((1, 2, 3)).sum()
        w = inv.invert(x)
    assert inv.history[0] == pytest.approx(float(enc_l2) / 3, rel=1e-4)   # step 0 = the encoder's reconstruction
    assert inv.history[-1] < inv.history[0]
    with pytest.raises(ValueError, match="needs an encoder"):
        INVERTERS["optim_from_encoder"](g, steps=1)


def test_build_inverter_from_config(gen_and_targets):
    from e4e.config import build_config

    g, x = gen_and_targets
    cfg = build_config(dotlist=["projection.steps=3", "projection.w_avg_samples=500", "projection.perceptual=l2"])
    inv = O.build_inverter("optim_wplus", cfg, generator=g)
    assert inv.steps == 3 and inv.perceptual == "l2"
    assert inv.invert(x).shape == (3, g.n_latent, g.style_dim)


def test_invert_cli_skips_bad_images(tmp_path, gen_and_targets):
    from PIL import Image

    from e4e.checkpoints import save_generator
    from experiments.invert import main

    g, x = gen_and_targets
    gpath = tmp_path / "g.pt"
    save_generator(g, gpath)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        arr = ((x[i].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).byte().numpy()
        Image.fromarray(arr).save(imgs / f"im{i}.png")
    (imgs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    args = ["--method", "optim_w", "--generator", str(gpath), "--images", str(imgs), "--out", str(out),
            "--batch-size", "2", "projection.steps=2", "projection.w_avg_samples=200", "projection.perceptual=l2"]
    assert main(args) == 0
    res = torch.load(out / "latents.pt")
    assert res["names"] == ["im0.png", "im1.png"] and res["latents"].shape == (2, g.n_latent, g.style_dim)
    assert sorted(p.name for p in (out / "recon").iterdir()) == ["im0.png", "im1.png"]
    assert "broken.png" in (out / "skipped.txt").read_text()
    assert main(args + ["--fail-fast"]) == 3
