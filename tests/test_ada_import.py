"""StyleGAN2-ADA import (e4e.models.ada, ``e4e-weights import-ada``): images of the converted
generator against a reference forward written here after NVlabs' training/networks.py (fp32, the
generic up/down path of conv2d_resample and upfirdn2d's reference implementation, so nothing is
shared with e4e.models.stylegan2), and the safety of the pickle reader. The test pickles have the
layout of network-snapshot-*.pkl: persistent objects reduced through
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, ``dnnlib.util.EasyDict`` kwargs;
the fake modules exist in ``sys.modules`` only while dumping."""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from e4e.checkpoints import load_generator
from e4e.models.ada import import_ada
from experiments.weights import main as weights_main

pytestmark = pytest.mark.usefixtures("one_thread")
SQRT2 = math.sqrt(2)


def lrelu(x):
    return F.leaky_relu(x, 0.2) * SQRT2


def setup_filter(k=(1, 3, 3, 1)):
    k = torch.tensor(k, dtype=torch.float32)
    k = k[:, None] * k[None, :]
    return k / k.sum()


def upfirdn2d(x, f, up=1, pad=(0, 0, 0, 0), gain=1):
    """NVlabs' _upfirdn2d_ref for a 2-D filter, non-negative padding, down=1."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(b, c, h * up, w * up)
    x = F.pad(x, list(pad))
    f = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)  # flip_filter=False: convolution
    return F.conv2d(x, f, groups=c)


def conv2d_resample(x, w, f, up, padding):
    if up == 1:
        return F.conv2d(x, w, padding=padding)  # flip_weight=True (correlation)
    p0, p1 = padding + (f.shape[-1] + up - 1) // 2, padding + (f.shape[-1] - up) // 2
    x = upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up ** 2)
    return F.conv2d(x, w.flip([2, 3]))  # flip_weight=False (true convolution), NVlabs' generic path


class EasyDict(dict):
    pass


EasyDict.__module__ = "dnnlib.util"


# --- reference networks: NVlabs names, parameters and attributes ------------------------------
class FullyConnectedLayer(nn.Module):
    def __init__(self, in_features, out_features, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], np.float32(bias_init)) + 0.1 * torch.randn(out_features))
        self.weight_gain = lr_multiplier / np.sqrt(in_features)  # np.float64, as in NVlabs
        self.bias_gain = lr_multiplier

    def forward(self, x):
        x = x @ (self.weight * self.weight_gain).t() + self.bias * self.bias_gain
        return lrelu(x) if self.activation == "lrelu" else x


class MappingNetwork(nn.Module):
    def __init__(self, z_dim, w_dim, num_ws, num_layers=4, lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, 0, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(z_dim if i == 0 else w_dim, w_dim, "lrelu", lr_multiplier))
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.randn(w_dim))

    def forward(self, z):
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x


class SynthesisLayer(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, use_noise=True):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, use_noise, "lrelu"
        self.conv_clamp = None
        self.register_buffer("resample_filter", setup_filter())
        self.padding, self.act_gain = 1, SQRT2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(0.3 * torch.randn([]))
        self.bias = nn.Parameter(0.1 * torch.randn(out_channels))

    def forward(self, x, w, noise_mode="const"):
        styles = self.affine(w)
        dcoefs = ((self.weight[None] * styles[:, None, :, None, None]).square().sum([2, 3, 4]) + 1e-8).rsqrt()
        x = conv2d_resample(x * styles[:, :, None, None], self.weight, self.resample_filter, self.up, self.padding)
        x = x * dcoefs[:, :, None, None]
        if self.use_noise and noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return lrelu(x + self.bias[None, :, None, None])


class ToRGBLayer(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim):
        super().__init__()
        self.conv_clamp = None
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(0.1 * torch.randn(out_channels))
        self.weight_gain = 1 / np.sqrt(in_channels)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        return F.conv2d(x * styles[:, :, None, None], self.weight) + self.bias[None, :, None, None]


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, use_noise=True):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution, self.img_channels = in_channels, w_dim, resolution, 3
        self.architecture, self.use_fp16, self.is_last = "skip", False, False
        self.register_buffer("resample_filter", setup_filter())
        self.num_conv, self.num_torgb = 1, 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, use_noise=use_noise)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, use_noise=use_noise)
        self.torgb = ToRGBLayer(out_channels, 3, w_dim)

    def forward(self, x, img, ws, noise_mode):
        w = iter(ws.unbind(1))
        if self.in_channels == 0:
            x = self.conv1(self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1), next(w), noise_mode)
        else:
            x = self.conv1(self.conv0(x, next(w), noise_mode), next(w), noise_mode)
        if img is not None:
            img = upfirdn2d(img, self.resample_filter, up=2, pad=(2, 1, 2, 1), gain=4)
        y = self.torgb(x, next(w))
        return x, (img + y if img is not None else y)


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim, img_resolution, channel_base=128, channel_max=16, use_noise=True):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, 3
        self.block_resolutions = [2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, use_noise)
            self.num_ws += block.num_conv
            setattr(self, f"b{r}", block)
        self.num_ws += 1  # the last block's torgb

    def forward(self, ws, noise_mode="const"):
        x = img = None
        i = 0
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            x, img = block(x, img, ws.narrow(1, i, block.num_conv + block.num_torgb), noise_mode)
            i += block.num_conv
        return img


class Generator(nn.Module):
    def __init__(self, z_dim=32, w_dim=32, img_resolution=32, mapping_kwargs=None, synthesis_kwargs=None):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, 0, w_dim, img_resolution, 3
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, **(synthesis_kwargs or {}))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, **(mapping_kwargs or {}))
        self._init_kwargs = EasyDict(z_dim=z_dim, mapping_kwargs=EasyDict(mapping_kwargs or {}))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.b4 = FullyConnectedLayer(8, 1)


class AugmentPipe(nn.Module):
    def __init__(self):
        super().__init__()
        self.xflip = 1.0
        self.register_buffer("p", torch.zeros([]))


# --- writing network pickles in NVlabs' layout -----------------------------------------------
def _reconstruct_persistent_obj(meta):  # the name the pickle references; never called by the reader
    raise AssertionError("the reader must not call the pickle's reconstructor")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
NV_CLASSES = {c.__name__ for c in (FullyConnectedLayer, MappingNetwork, SynthesisLayer, ToRGBLayer, SynthesisBlock,
                                   SynthesisNetwork, Generator, Discriminator, AugmentPipe)}


class NVPickler(pickle.Pickler):
    module_src = "pass"

    def reducer_override(self, obj):
        if isinstance(obj, nn.Module) and type(obj).__name__ in NV_CLASSES:
            meta = dict(type="class", version=6, module_src=self.module_src, class_name=type(obj).__name__,
                        state=dict(obj.__dict__))
            return _reconstruct_persistent_obj, (meta,)
        return NotImplemented


@contextlib.contextmanager
def fake_nvlabs_modules():
    names = {"torch_utils": types.ModuleType("torch_utils"), "dnnlib": types.ModuleType("dnnlib"),
             "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
             "dnnlib.util": types.ModuleType("dnnlib.util")}
    names["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    names["dnnlib.util"].EasyDict = EasyDict
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules.update(names)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_pickle(path, data, module_src="pass", protocol=3):
    with fake_nvlabs_modules(), open(path, "wb") as f:
        p = NVPickler(f, protocol=protocol)
        p.module_src = module_src
        p.dump(data)
    return path


def network_pickle(path, G, module_src="pass", protocol=3):
    data = {"G": G, "D": Discriminator(), "G_ema": G, "augment_pipe": AugmentPipe(),
            "training_set_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset", path="x.zip",
                                            resolution=G.img_resolution, use_labels=False, xflip=False)}
    return write_pickle(path, data, module_src, protocol)


def sentinel_src(sentinel) -> str:
    return f"open({str(sentinel)!r}, 'w').write('module_src was executed')\n"


def run_cli(argv, capsys):
    rc = weights_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("lr, protocol, use_noise", [(0.01, 3, True), (0.05, 4, False)])
def test_converted_generator_matches_the_reference_forward(tmp_path, lr, protocol, use_noise):
    torch.manual_seed(1)
    G = Generator(mapping_kwargs={"num_layers": 4, "lr_multiplier": lr},
                  synthesis_kwargs={"use_noise": use_noise}).eval()
    sentinel = tmp_path / "ran"
    path = network_pickle(tmp_path / "G.pkl", G, sentinel_src(sentinel), protocol)
    g, latent_avg, meta = import_ada(path)
    assert not sentinel.exists()  # module_src of every persistent object was never executed
    assert (g.size, g.n_latent, g.style_dim, g.n_mlp) == (32, G.num_ws, 32, 4)
    with torch.no_grad():
        z = torch.randn(4, 32)
        w_plus = torch.randn(4, G.num_ws, 32)  # a different w per layer checks the row order
        d_map = (g.mapping(z) - G.mapping(z)).abs().max().item()
        for mode in ("const", "none"):
            ref = G.synthesis(w_plus, noise_mode=mode)
            out = g.synthesis(w_plus, noise_mode=mode)
            d_img = (out - ref).abs().max().item()
            print(f"lr={lr} noise={use_noise} mode={mode}: max|diff| image {d_img:.2e} "
                  f"(|ref| max {ref.abs().max():.2f}), mapping {d_map:.2e}")
            assert d_img < 1e-5 * max(1.0, ref.abs().max().item())
    assert d_map < 1e-5
    assert torch.equal(latent_avg, G.mapping.w_avg)
    assert meta["latent_avg_source"]["method"] == "w_avg" and meta["ada_import"]["mapping_lr_multiplier"] == lr


def test_import_ada_cli_writes_a_loadable_generator(tmp_path, capsys):
    torch.manual_seed(2)
    G = Generator(mapping_kwargs={"w_avg_beta": None}).eval()  # no w_avg buffer: latent_avg is computed
    pkl = network_pickle(tmp_path / "G.pkl", G)
    out = tmp_path / "out" / "G.pt"
    rc, stdout, err = run_cli(["import-ada", pkl, "--out", out, "--n-samples", 500, "--seed", 3], capsys)
    assert rc == 0, err
    assert "mean of the mapping network over 500" in stdout
    g = load_generator(out)
    src = torch.load(out, weights_only=True)["latent_avg_source"]
    assert src == {**src, "method": "mapping_mean", "n_samples": 500, "seed": 3, "w_avg_in_pickle": False}
    with torch.no_grad():
        assert torch.allclose(g.latent_avg, g.mean_latent(500, seed=3)[0])
        g_pkl = load_generator(pkl)  # .pkl files go through the same safe import (n = 10000, seed 0)
        w = torch.randn(2, g.n_latent, 32)
        assert torch.equal(g_pkl.synthesis(w), g.synthesis(w))
        assert torch.allclose(g.synthesis(w), G.synthesis(w), atol=1e-5)
        assert torch.allclose(g_pkl.latent_avg, g.mean_latent(10_000, seed=0)[0])
    rc, stdout, _ = run_cli(["import-ada", pkl, "--out", out, "--latent-avg", "w_avg"], capsys)
    assert rc == 2


class Payload:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "builtins.eval", "torch.load"])
def test_pickles_calling_anything_else_are_refused_before_it_runs(tmp_path, capsys, kind):
    sentinel = tmp_path / "ran"
    payload = {"os.system": Payload(os.system, f"touch {sentinel}"),
               "builtins.exec": Payload(exec, f"open({str(sentinel)!r}, 'w')"),
               "builtins.eval": Payload(eval, f"open({str(sentinel)!r}, 'w')"),
               "torch.load": Payload(torch.load, str(sentinel))}[kind]
    G = Generator(img_resolution=8).eval()
    pkl = write_pickle(tmp_path / "evil.pkl", {"G_ema": G, "D": payload})
    rc, out, err = run_cli(["import-ada", pkl, "--out", tmp_path / "G.pt"], capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "nothing in it was executed" in err
    assert not sentinel.exists() and not (tmp_path / "G.pt").exists()


class OversizedTensor:
    def __reduce__(self):  # a tensor record that claims 100 elements of a 3-element storage
        return torch._utils._rebuild_tensor_v2, (torch.zeros(3).storage(), 0, (100,), (1,), False, {})


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_tensor_records_past_their_storage_are_refused(tmp_path, capsys):
    pkl = write_pickle(tmp_path / "G.pkl", {"G_ema": Generator(img_resolution=8), "x": OversizedTensor()})
    rc, _, err = run_cli(["import-ada", pkl, "--out", tmp_path / "G.pt"], capsys)
    assert rc == 2 and "reaches past its storage" in err and err.count("\n") == 1


def test_persistent_object_with_code_is_read_as_data_only(tmp_path, capsys):
    sentinel = tmp_path / "ran"
    evil = Discriminator()  # a persistent object that is no generator; its module_src would write the sentinel
    pkl = write_pickle(tmp_path / "evil.pkl", {"G_ema": evil}, module_src=sentinel_src(sentinel))
    rc, out, err = run_cli(["import-ada", pkl, "--out", tmp_path / "G.pt"], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert not sentinel.exists()


@pytest.mark.parametrize("change, message", [("architecture", "architecture is not 'skip'"),
                                             ("c_dim", "conditional generator")])
def test_unsupported_generators_get_one_error_line(tmp_path, capsys, change, message):
    G = Generator(img_resolution=8).eval()
    if change == "architecture":
        G.synthesis.b8.architecture = "resnet"
    else:
        G.c_dim = 10
    rc, _, err = run_cli(["import-ada", network_pickle(tmp_path / "G.pkl", G), "--out", tmp_path / "G.pt"], capsys)
    assert rc == 2 and err.count("\n") == 1 and message in err


def test_cli_help_and_default_listing(capsys):
    with pytest.raises(SystemExit) as e:
        weights_main(["import-ada", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--latent-avg" in text and "--n-samples" in text and "weights_only" in text
    rc, out, _ = run_cli([], capsys)
    assert rc == 0 and "present." in out
    rc, out, _ = run_cli(["list", "--json"], capsys)
    assert rc == 0 and out.lstrip().startswith("[")
    with pytest.raises(SystemExit) as e:  # a usage error: one line, exit 2
        weights_main(["import-ada", "missing.pkl"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "--out" in err
    rc, _, err = run_cli(["import-ada", "missing.pkl", "--out", "G.pt"], capsys)
    assert rc == 2 and err.startswith("error: ") and "missing.pkl" in err
