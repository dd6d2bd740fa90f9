"""StyleGAN2 generator / discriminator: modulated conv against a per-sample reference, rosinality
state-dict layout, output shapes, R1 double-backward."""
import math

import pytest
import torch
import torch.nn.functional as F

from e4e.ops import make_kernel, upfirdn2d
from e4e.models.stylegan2 import Discriminator, Generator, ModulatedConv2d

TINY = {r: 8 for r in (4, 8, 16, 32, 64, 128, 256, 512, 1024)}


def ref_modulated_conv(mod: ModulatedConv2d, x, style):
    """Per-sample loop: plain conv2d with a per-sample modulated (and demodulated) weight.
    Rosinality constants: FIR [1,3,3,1]; upsample = transposed conv stride 2 then blur with
    kernel*4 and pad (1, 1); downsample = blur with pad (2, 2) then conv stride 2."""
    k = make_kernel([1, 3, 3, 1]).to(x)
    weight = mod.weight[0] / math.sqrt(mod.in_channel * mod.kernel_size ** 2)
    s = F.linear(style, mod.modulation.weight / math.sqrt(style.shape[1]), mod.modulation.bias)
    outs = []
    for b in range(x.shape[0]):
        w = weight * s[b].view(1, -1, 1, 1)
        if mod.demodulate:
            w = w / torch.sqrt((w ** 2).sum((1, 2, 3), keepdim=True) + 1e-8)
        xb = x[b:b + 1]
        if mod.upsample:
            o = upfirdn2d(F.conv_transpose2d(xb, w.transpose(0, 1), stride=2), k * 4, pad=(1, 1))
        elif mod.downsample:
            o = F.conv2d(upfirdn2d(xb, k, pad=(2, 2)), w, stride=2)
        else:
            o = F.conv2d(xb, w, padding=mod.kernel_size // 2)
        outs.append(o)
    return torch.cat(outs)


@pytest.mark.parametrize("kind", ["plain", "upsample", "downsample", "no_demod", "1x1"])
def test_modulated_conv_fused_nonfused_and_loop_agree(kind):
    kw = {"upsample": kind == "upsample", "downsample": kind == "downsample", "demodulate": kind != "no_demod"}
    ks = 1 if kind == "1x1" else 3
    torch.manual_seed(1)
    mod = ModulatedConv2d(6, 5, ks, 16, **kw).double()
    x, style = torch.randn(3, 6, 8, 8, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    ref = ref_modulated_conv(mod, x, style)
    mod.fused = False
    a = mod(x, style)
    mod.fused = True
    b = mod(x, style)
    expected_hw = {"upsample": 16, "downsample": 4}.get(kind, 8)
    assert ref.shape == (3, 5, expected_hw, expected_hw)
    torch.testing.assert_close(a, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b, ref, rtol=1e-9, atol=1e-9)


def test_modulated_conv_auto_picks_by_shape_and_stays_exact(monkeypatch):
    """fused=None (default): grouped where h*w >= 16*in_channels, activation modulation elsewhere."""
    torch.manual_seed(2)
    mod = ModulatedConv2d(8, 4, 3, 16).double()
    assert mod.fused is None
    calls = []
    real = ModulatedConv2d._forward_grouped
    monkeypatch.setattr(ModulatedConv2d, "_forward_grouped", lambda self, *a: calls.append(1) or real(self, *a))
    style = torch.randn(2, 16, dtype=torch.float64)
    for hw, grouped in ((8, False), (12, True)):  # 64 < 128 <= 144 pixels for 8 channels
        calls.clear()
        x = torch.randn(2, 8, hw, hw, dtype=torch.float64)
        with torch.no_grad():
            out = mod(x, style)
        assert bool(calls) is grouped
        torch.testing.assert_close(out, ref_modulated_conv(mod, x, style), rtol=1e-9, atol=1e-9)
    calls.clear()
    x = torch.randn(2, 8, 12, 12, dtype=torch.float64, requires_grad=True)
    mod(x, style).sum().backward()  # under autograd: activation modulation (cheaper backward)
    assert not calls and x.grad is not None


# Hand-written from the rosinality layout of a 256 px, channel_multiplier 2 generator.
EXPECTED_256 = {
    "style.1.weight": (512, 512), "style.1.bias": (512,), "style.8.weight": (512, 512),
    "input.input": (1, 512, 4, 4),
    "conv1.conv.weight": (1, 512, 512, 3, 3), "conv1.conv.modulation.weight": (512, 512),
    "conv1.conv.modulation.bias": (512,), "conv1.noise.weight": (1,), "conv1.activate.bias": (512,),
    "to_rgb1.conv.weight": (1, 3, 512, 1, 1), "to_rgb1.conv.modulation.weight": (512, 512),
    "to_rgb1.bias": (1, 3, 1, 1),
    "convs.0.conv.weight": (1, 512, 512, 3, 3), "convs.0.conv.blur.kernel": (4, 4),
    "convs.1.conv.weight": (1, 512, 512, 3, 3),
    "convs.6.conv.weight": (1, 512, 512, 3, 3),     # 64 px: 256 * cm
    "convs.8.conv.weight": (1, 256, 512, 3, 3),     # 128 px: 128 * cm
    "convs.10.conv.weight": (1, 128, 256, 3, 3), "convs.10.conv.blur.kernel": (4, 4),
    "convs.11.conv.weight": (1, 128, 128, 3, 3), "convs.11.activate.bias": (128,),
    "to_rgbs.0.upsample.kernel": (4, 4), "to_rgbs.0.conv.weight": (1, 3, 512, 1, 1), "to_rgbs.0.bias": (1, 3, 1, 1),
    "to_rgbs.5.conv.weight": (1, 3, 128, 1, 1), "to_rgbs.5.conv.modulation.weight": (128, 512),
    "noises.noise_0": (1, 1, 4, 4), "noises.noise_1": (1, 1, 8, 8), "noises.noise_2": (1, 1, 8, 8),
    "noises.noise_12": (1, 1, 256, 256),
}


def test_generator_state_dict_layout_256():
    with torch.device("meta"):
        g = Generator(256)
    sd = g.state_dict()
    for k, shape in EXPECTED_256.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, (k, tuple(sd[k].shape), shape)
    assert g.n_latent == 14 and g.style_dim == 512 and g.size == 256
    assert "style.0.weight" not in sd and "style.9.weight" not in sd  # PixelNorm has no parameters; n_mlp 8
    assert "convs.1.conv.blur.kernel" not in sd and "noises.noise_13" not in sd and "convs.12.conv.weight" not in sd
    # style 16, input 1, conv1 5, to_rgb1 4, 12 convs x 5 + 6 blur kernels, 6 to_rgbs x 5, 13 noises
    assert len(sd) == 16 + 1 + 5 + 4 + 66 + 30 + 13
    assert all(k.startswith(("style.", "input.", "conv1.", "to_rgb1.", "convs.", "to_rgbs.", "noises.")) for k in sd)


@pytest.mark.parametrize("size,n_latent", [(512, 16), (1024, 18)])
def test_n_latent(size, n_latent):
    with torch.device("meta"):
        assert Generator(size).n_latent == n_latent


def test_generator_output_shape_and_noise_modes():
    g = Generator(32, style_dim=32, n_mlp=2, channels=TINY).eval()
    for name, p in g.named_parameters():
        if name.endswith("noise.weight"):
            p.data.fill_(0.5)  # zero at init: make the noise visible
    z = torch.randn(2, 32)
    w = g.mapping(z)
    assert w.shape == (2, 32)
    wp = w.unsqueeze(1).repeat(1, g.n_latent, 1)
    with torch.no_grad():
        a, b = g.synthesis(wp), g.synthesis(wp)
        c = g.synthesis(wp, noise_mode="random")
        d = g.synthesis(w)  # [B, D] broadcast over the rows
    assert a.shape == (2, 3, 32, 32) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, d)
    assert not torch.allclose(a, c)
    assert g.mean_latent(256, seed=3).shape == (1, 32)
    torch.testing.assert_close(g.mean_latent(256, seed=3), g.mean_latent(256, seed=3))
    with pytest.raises(ValueError):
        g.synthesis(torch.randn(2, 3, 32))


def test_generator_fused_and_nonfused_synthesis_agree():
    g = Generator(16, style_dim=16, n_mlp=1, channels=TINY).double().eval()
    wp = torch.randn(2, g.n_latent, 16, dtype=torch.float64)
    with torch.no_grad():
        a = g.synthesis(wp)
        for m in g.modules():
            if isinstance(m, ModulatedConv2d):
                m.fused = True
        b = g.synthesis(wp)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_discriminator_r1_double_backward():
    d = Discriminator(16, channels=TINY)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    out = d(x)
    assert out.shape == (4, 1)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    r1 = grad.pow(2).flatten(1).sum(1).mean()
    r1.backward()
    grads = [p.grad for p in d.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)


def test_discriminator_keys():
    with torch.device("meta"):
        sd = Discriminator(256).state_dict()
    assert tuple(sd["convs.0.0.weight"].shape) == (128, 3, 1, 1)
    assert tuple(sd["convs.1.conv1.0.weight"].shape) == (128, 128, 3, 3)
    assert tuple(sd["convs.1.conv2.0.kernel"].shape) == (4, 4)
    assert tuple(sd["convs.1.skip.1.weight"].shape) == (256, 128, 1, 1)
    assert tuple(sd["final_conv.0.weight"].shape) == (512, 513, 3, 3)
    assert tuple(sd["final_linear.0.weight"].shape) == (512, 512 * 16)
    assert tuple(sd["final_linear.1.weight"].shape) == (1, 512)
