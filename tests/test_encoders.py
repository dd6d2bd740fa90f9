"""Encoders (shapes, e4e progressive stages), backbones, latent discriminator + codes pool, and
the encoder / ReStyle inverters."""
import pytest
import torch
import torch.nn.functional as F

import e4e.inverters.restyle  # noqa: F401  (registers restyle_*)
from e4e.inverters import get_inverter
from e4e.models.backbones import Backbone, ResNet34Trunk, torchvision_to_restyle
from e4e.models.encoders import (ENCODERS, Encoder4Editing, GradualStyleBlock, ProgressiveBackboneEncoder,
                                 build_encoder, fit_to_input)
from e4e.models.latent_disc import LatentCodesDiscriminator, LatentCodesPool
from e4e.models.stylegan2 import Generator

TINY = {r: 8 for r in (4, 8, 16, 32, 64, 128, 256, 512, 1024)}


def small(method, n_latent=10, size=64, backbone="ir_se50", **kw):
    nc = 6 if method.startswith("restyle") else 3
    return build_encoder(method, n_latent=n_latent, style_dim=32, small=True, input_size=size, input_nc=nc,
                         backbone=backbone, **kw).eval()


@pytest.mark.parametrize("method", sorted(ENCODERS))
@pytest.mark.parametrize("backbone", ["ir_se50", "resnet34"])
def test_encoder_output_shapes(method, backbone):
    enc = small(method, backbone=backbone)
    x = torch.randn(2, enc.config()["input_nc"], 64, 64)
    with torch.no_grad():
        out = enc(x)
    assert out.shape == (2, 10, 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size,n_latent", [(256, 8), ((192, 256), 8), (32, 8)])
def test_e4e_input_sizes(size, n_latent):
    enc = small("e4e", n_latent=n_latent, size=size)
    hw = size if isinstance(size, tuple) else (size, size)
    with torch.no_grad():
        assert enc(torch.randn(1, 3, *hw)).shape == (1, n_latent, 32)


def test_single_w_encoder_repeats_one_code():
    enc = small("w_encoder")
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 64, 64))
    assert torch.equal(out, out[:, :1].expand_as(out))


@pytest.mark.parametrize("cls_method", ["e4e", "restyle_e4e"])
def test_progressive_stages(cls_method):
    enc = small(cls_method)
    x = torch.randn(2, enc.config()["input_nc"], 64, 64)
    assert enc.progressive_stage == "inference"
    for stage in (0, 1, 3, 7, 9, 12, "inference"):
        enc.set_progressive_stage(stage)
        with torch.no_grad():
            w = enc(x)
        last = 9 if stage == "inference" else min(stage, 9)
        for i in range(10):
            same = torch.equal(w[:, i], w[:, 0])
            assert same == (i == 0 or i > last), (stage, i)
    with pytest.raises(ValueError):
        enc.set_progressive_stage(-1)


def test_e4e_stage_offsets_match_psp_style_blocks():
    """Row i of e4e (stage 'inference') is w0 + map2style_i(features of its level)."""
    torch.manual_seed(0)
    e4e = small("e4e")
    psp = small("psp")
    psp.load_state_dict(e4e.state_dict())  # same key set
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = e4e(x), psp(x)
    torch.testing.assert_close(a[:, 0], b[:, 0])
    torch.testing.assert_close(a[:, 1:], b[:, 1:] + b[:, :1], rtol=1e-5, atol=1e-5)


def test_gradual_style_block():
    blk = GradualStyleBlock(16, 8, 16, style_dim=12)
    assert [k for k in blk.state_dict() if k.endswith("weight")] == [f"convs.{i}.weight" for i in (0, 2, 4, 6)] + [
        "linear.weight"]
    assert blk.convs[1].negative_slope == 0.01
    assert blk(torch.randn(2, 16, 16, 16)).shape == (2, 12)
    with pytest.raises(ValueError, match="input size"):
        blk(torch.randn(2, 16, 64, 64))


def test_encoder_backward():
    enc = small("e4e").train()
    out = enc(torch.randn(2, 3, 64, 64))
    out.square().mean().backward()
    assert enc.styles[9].linear.weight.grad is not None and enc.input_layer[0].weight.grad is not None


def test_encoder_config_rebuilds_same_architecture():
    enc = small("psp", backbone="resnet34", units=(1, 2, 1, 1))
    clone = build_encoder("psp", **enc.config())
    assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in clone.state_dict().items()}


# --------------------------------------------------------------------------------------------- backbones
def test_arcface_backbone_layout_and_normalised_output():
    with torch.device("meta"):
        sd = Backbone(112, 50, "ir_se").state_dict()
    assert tuple(sd["output_layer.3.weight"].shape) == (512, 512 * 7 * 7)
    assert "output_layer.4.weight" in sd and "output_layer.4.running_var" in sd
    assert "body.23.res_layer.5.fc2.weight" in sd and "body.24.res_layer.0.weight" not in sd
    net = Backbone(112, 50, "ir_se", width=0.125).eval()
    with torch.no_grad():
        f = net(torch.randn(3, 3, 112, 112))
    assert f.shape == (3, 512)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(3))


def test_resnet34_trunk_matches_torchvision_keys():
    import torchvision

    with torch.device("meta"):
        tv = {k: v.shape for k, v in torchvision.models.resnet34(weights=None).state_dict().items()
              if not k.startswith("fc.")}
        ours = {k: v.shape for k, v in ResNet34Trunk().state_dict().items()}
    assert ours == tv
    six = ResNet34Trunk(input_nc=6, width=0.125)
    feats = six(torch.randn(1, 6, 64, 64))
    assert [f.shape[1] for f in feats] == [8, 16, 32, 64]


def test_torchvision_resnet_to_restyle_encoder():
    import torchvision

    with torch.device("meta"):  # official widths: key and shape mapping
        sd = torchvision.models.resnet34(weights=None).state_dict()
        enc = build_encoder("restyle_psp", n_latent=4, backbone="resnet34", input_nc=6)
    mapped = torchvision_to_restyle(sd, input_nc=3)
    own = enc.state_dict()
    assert {k for k in own if k not in mapped} == {k for k in own if k.startswith(("styles.", "relu."))}
    assert all(own[k].shape == v.shape or k == "conv1.weight" for k, v in mapped.items())
    # values, on a small trunk with torchvision names
    tv = ResNet34Trunk(width=0.125).state_dict()
    mapped = torchvision_to_restyle(tv, input_nc=6, generator=torch.Generator().manual_seed(0))
    enc = build_encoder("restyle_psp", n_latent=2, backbone="resnet34", input_nc=6, width=0.125)
    missing, unexpected = enc.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.startswith(("styles.", "relu.")) for k in missing)
    torch.testing.assert_close(enc.conv1.weight[:, :3], tv["conv1.weight"])
    torch.testing.assert_close(enc.body[15].conv2.weight, tv["layer4.2.conv2.weight"])


# --------------------------------------------------------------------------------------------- latent D + pool
def test_latent_discriminator_layout():
    d = LatentCodesDiscriminator(512, 4)
    shapes = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert shapes == {"mlp.0.weight": (512, 512), "mlp.0.bias": (512,), "mlp.2.weight": (512, 512),
                      "mlp.2.bias": (512,), "mlp.4.weight": (512, 512), "mlp.4.bias": (512,),
                      "mlp.6.weight": (1, 512), "mlp.6.bias": (1,)}
    assert d.mlp[1].negative_slope == 0.2
    assert d(torch.randn(5, 512)).shape == (5, 1)
    assert d(torch.randn(2, 18, 512)).shape == (2, 18, 1)


def test_codes_pool_semantics():
    rng_before = torch.get_rng_state()
    pool = LatentCodesPool(4, generator=torch.Generator().manual_seed(1))
    first = torch.arange(12.).view(3, 4)
    torch.testing.assert_close(pool.query(first), first)  # filling: returned as is
    assert len(pool) == 3
    second = 100 + torch.arange(12.).view(3, 4)
    out = pool.query(second)
    torch.testing.assert_close(out[0], second[0])  # fills the last slot
    assert len(pool) == 4
    seen_old = seen_new = 0
    stored = {tuple(r.tolist()) for r in torch.cat([first, second])}
    for t in range(30):
        q = 1000 * (t + 1) + torch.arange(8.).view(2, 4)
        out = pool.query(q)
        for row, qrow in zip(out, q):
            if torch.equal(row, qrow):
                seen_new += 1
            else:
                assert tuple(row.tolist()) in stored  # a previously stored code
                seen_old += 1
            stored.add(tuple(qrow.tolist()))
        assert len(pool) == 4
    assert seen_old > 10 and seen_new > 10  # probability 1/2 each
    assert torch.equal(torch.get_rng_state(), rng_before)  # no global RNG use


def test_codes_pool_wplus_seeding_and_state():
    codes = torch.randn(6, 5, 3)
    a, b = LatentCodesPool(2, seed=7), LatentCodesPool(2, seed=7)
    outs_a = [a.query(codes) for _ in range(3)]
    outs_b = [b.query(codes) for _ in range(3)]
    for x, y in zip(outs_a, outs_b):
        assert x.shape == (6, 3)
        torch.testing.assert_close(x, y)
    for row in outs_a[0][:2]:  # filling phase returns one row of each w+ code
        assert any(torch.equal(row, r) for r in codes.reshape(-1, 3))
    c = LatentCodesPool(2, seed=0)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.query(codes), a.query(codes))
    assert torch.equal(LatentCodesPool(0).query(codes), codes)


# --------------------------------------------------------------------------------------------- inverters
def _gen(size=32):
    g = Generator(size, style_dim=32, n_mlp=2, channels=TINY).eval()
    return g, g.mean_latent(64, seed=0)


@pytest.mark.parametrize("method", ["e4e", "psp", "w_encoder"])
def test_encoder_inverters(method):
    g, la = _gen()
    inv = get_inverter(method)(g, latent_avg=la, input_size=32, small=True).eval()
    assert inv.method == method and inv.input_size == 32
    x = torch.rand(2, 3, 64, 64) * 2 - 1  # resized to 32 inside
    with torch.no_grad():
        w = inv.invert(x)
        want = inv.encoder(F.adaptive_avg_pool2d(x, 32)) + la
        img = inv.generate(w)
    assert w.shape == (2, g.n_latent, 32)
    torch.testing.assert_close(w, want)
    assert img.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("method", ["restyle_e4e", "restyle_psp"])
def test_restyle_iterations(method):
    g, la = _gen()
    inv = get_inverter(method)(g, latent_avg=la, input_size=32, small=True, n_iters=2).eval()
    assert inv.n_iters == 2 and inv.encoder.config()["input_nc"] == 6
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        w, steps = inv.invert(x, return_steps=True)
        avg = g.synthesis(la.expand(g.n_latent, -1).unsqueeze(0))
        w1 = la.expand(2, g.n_latent, -1) + inv.encoder(torch.cat([x, avg.expand(2, -1, -1, -1)], 1))
        w2 = w1 + inv.encoder(torch.cat([x, g.synthesis(w1)], 1))
    assert len(steps) == 2 and w.shape == (2, g.n_latent, 32)
    torch.testing.assert_close(steps[0], w1)
    torch.testing.assert_close(steps[1], w2)
    torch.testing.assert_close(inv.refine(x, avg.expand(2, -1, -1, -1), la.expand(2, g.n_latent, -1)), w1)


def test_fit_to_input_cars_convention():
    x = torch.randn(1, 3, 512, 512)
    out = fit_to_input(x, (192, 256))
    torch.testing.assert_close(out, F.adaptive_avg_pool2d(x[:, :, 64:448], (192, 256)))
    assert fit_to_input(torch.randn(1, 3, 100, 80), 64).shape == (1, 3, 64, 64)
    y = torch.randn(1, 3, 64, 64)
    assert fit_to_input(y, 64) is y


def test_encoder_rejects_row_mismatch():
    g, la = _gen()
    enc = small("e4e", n_latent=5, size=32)
    with pytest.raises(ValueError, match="rows"):
        get_inverter("e4e")(g, latent_avg=la, encoder=enc)
    assert isinstance(Encoder4Editing, type) and isinstance(ProgressiveBackboneEncoder, type)
