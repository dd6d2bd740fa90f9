"""Checkpoint formats: rosinality generators (round trip, training checkpoints with a pickled
Namespace), official e4e / pSp / ReStyle encoder files (exact key layout, strict loading), this
project's inverter format, and clear errors for the wrong files."""
import argparse

import pytest
import torch

import e4e.inverters.restyle  # noqa: F401
from e4e.checkpoints import (generator_config, load_checkpoint, load_generator, load_inverter, save_generator,
                             save_inverter)
from e4e.inverters import get_inverter
from e4e.models.encoders import build_encoder
from e4e.models.stylegan2 import Discriminator, Generator
from e4e.weights import WeightsMissingError

TINY = {r: 4 for r in (4, 8, 16, 32, 64, 128, 256, 512, 1024)}


# --------------------------------------------------------------------------------------------- official layout
def _bn(p, c):
    return {f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,),
            f"{p}.num_batches_tracked": ()}


def official_encoder_layout(method: str, n_latent: int, backbone: str = "ir_se50", input_nc: int = 3) -> dict:
    """Key -> shape of the official encoders, written from the official layout (IR-SE-50 of
    TreB1eN/pSp helpers, ReStyle's ResNet-34 variant, map2style blocks, FPN laterals)."""
    out = {}
    depths, in_c, b = (64, 128, 256, 512), 64, 0
    if backbone == "ir_se50":
        out["input_layer.0.weight"] = (64, input_nc, 3, 3)
        out.update(_bn("input_layer.1", 64))
        out["input_layer.2.weight"] = (64,)
        for n, d in zip((3, 4, 14, 3), depths):
            for _ in range(n):
                p = f"body.{b}"
                if in_c != d:
                    out[f"{p}.shortcut_layer.0.weight"] = (d, in_c, 1, 1)
                    out.update(_bn(f"{p}.shortcut_layer.1", d))
                out.update(_bn(f"{p}.res_layer.0", in_c))
                out[f"{p}.res_layer.1.weight"] = (d, in_c, 3, 3)
                out[f"{p}.res_layer.2.weight"] = (d,)
                out[f"{p}.res_layer.3.weight"] = (d, d, 3, 3)
                out.update(_bn(f"{p}.res_layer.4", d))
                out[f"{p}.res_layer.5.fc1.weight"] = (d // 16, d, 1, 1)
                out[f"{p}.res_layer.5.fc2.weight"] = (d, d // 16, 1, 1)
                in_c, b = d, b + 1
    else:  # ReStyle ResNet-34: conv1, bn1, PReLU relu, flattened torchvision BasicBlocks
        out["conv1.weight"] = (64, input_nc, 7, 7)
        out.update(_bn("bn1", 64))
        out["relu.weight"] = (64,)
        for n, d in zip((3, 4, 6, 3), depths):
            for _ in range(n):
                p = f"body.{b}"
                out[f"{p}.conv1.weight"] = (d, in_c, 3, 3)
                out.update(_bn(f"{p}.bn1", d))
                out[f"{p}.conv2.weight"] = (d, d, 3, 3)
                out.update(_bn(f"{p}.bn2", d))
                if in_c != d:
                    out[f"{p}.downsample.0.weight"] = (d, in_c, 1, 1)
                    out.update(_bn(f"{p}.downsample.1", d))
                in_c, b = d, b + 1
    if method == "w_encoder":
        out.update({"linear.weight": (512, 512), "linear.bias": (512,)})
        return out
    for i in range(n_latent):
        n_convs = 4 if method.startswith("restyle") or i < 3 else 5 if i < 7 else 6
        for j in range(n_convs):
            out[f"styles.{i}.convs.{2 * j}.weight"] = (512, 512, 3, 3)
            out[f"styles.{i}.convs.{2 * j}.bias"] = (512,)
        out[f"styles.{i}.linear.weight"] = (512, 512)
        out[f"styles.{i}.linear.bias"] = (512,)
    if method in ("e4e", "psp"):
        out.update({"latlayer1.weight": (512, 256, 1, 1), "latlayer1.bias": (512,),
                    "latlayer2.weight": (512, 128, 1, 1), "latlayer2.bias": (512,)})
    return out


LAYOUTS = [("e4e", 18, "ir_se50", 3), ("psp", 18, "ir_se50", 3), ("w_encoder", 18, "ir_se50", 3),
           ("e4e", 16, "ir_se50", 3), ("restyle_psp", 18, "ir_se50", 6), ("restyle_e4e", 18, "ir_se50", 6),
           ("restyle_psp", 16, "resnet34", 6), ("restyle_e4e", 14, "resnet34", 6)]


@pytest.mark.parametrize("method,n_latent,backbone,input_nc", LAYOUTS)
def test_full_size_encoders_have_the_official_layout(method, n_latent, backbone, input_nc):
    with torch.device("meta"):
        enc = build_encoder(method, n_latent=n_latent, backbone=backbone, input_nc=input_nc)
    got = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert got == official_encoder_layout(method, n_latent, backbone, input_nc)


# --------------------------------------------------------------------------------------------- generators
@pytest.mark.parametrize("size", [256, 512, 1024])
def test_generator_save_load_round_trip(tmp_path, size):
    g = Generator(size, style_dim=16, n_mlp=2, channels=TINY).eval()
    la = torch.randn(16)
    path = save_generator(g, tmp_path / "g.pt", latent_avg=la, extra={"meta": {"size": size}})
    g2 = load_generator(path)
    assert g2.size == size and g2.n_latent == g.n_latent
    assert g2.channels == {r: c for r, c in g.channels.items() if r <= size}
    torch.testing.assert_close(g2.latent_avg, la)
    for (k, a), (k2, b) in zip(g.state_dict().items(), g2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    if size <= 512:  # 1024 synthesis is a 1024x1024 pass: covered by the state-dict equality
        wp = torch.randn(1, g.n_latent, 16)
        with torch.no_grad():
            torch.testing.assert_close(g2.synthesis(wp), g.synthesis(wp))


@pytest.mark.parametrize("size,cm", [(1024, 2), (256, 1), (512, 2)])
def test_generator_config_inferred_from_full_size_tensors(size, cm):
    with torch.device("meta"):
        sd = Generator(size, channel_multiplier=cm).state_dict()
    cfg = generator_config(sd)
    assert (cfg["size"], cfg["style_dim"], cfg["n_mlp"], cfg["channel_multiplier"]) == (size, 512, 8, cm)


@pytest.mark.parametrize("legacy", [False, True])
def test_rosinality_training_checkpoint_with_namespace(tmp_path, legacy):
    g = Generator(16, style_dim=8, n_mlp=3, channels=TINY)
    d = Discriminator(16, channels=TINY)
    g_opt = torch.optim.Adam(g.parameters(), lr=0.002, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(d.parameters(), lr=0.002, betas=(0.0, 0.99))
    args = argparse.Namespace(size=16, batch=4, r1=10.0, path="/data/lmdb", channel_multiplier=2, n_mlp=3)
    ck = {"g": g.state_dict(), "d": d.state_dict(), "g_ema": g.state_dict(), "g_optim": g_opt.state_dict(),
          "d_optim": d_opt.state_dict(), "args": args}
    path = tmp_path / "050000.pt"
    torch.save(ck, path, _use_new_zipfile_serialization=not legacy)
    g2 = load_generator(path)
    assert g2.n_mlp == 3 and g2.style_dim == 8 and g2.size == 16 and g2.latent_avg is None
    assert load_checkpoint(path)["args"].r1 == 10.0


class _Custom:  # a non-allow-listed pickled object
    pass


def test_unsafe_pickles_need_allow_pickle(tmp_path):
    g = Generator(8, style_dim=8, n_mlp=1, channels=TINY)
    path = tmp_path / "odd.pt"
    torch.save({"g_ema": g.state_dict(), "thing": _Custom()}, path)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_generator(path)
    assert load_generator(path, allow_pickle=True).size == 8


# --------------------------------------------------------------------------------------------- official encoders
E4E_OPTS = {"exp_dir": "exp", "dataset_type": "ffhq_encode", "encoder_type": "Encoder4Editing", "batch_size": 8,
            "lpips_lambda": 0.8, "id_lambda": 0.1, "l2_lambda": 1.0, "w_discriminator_lambda": 0.1,
            "w_discriminator_lr": 2e-5, "r1": 10, "d_reg_every": 16, "use_w_pool": True, "w_pool_size": 50,
            "delta_norm": 2, "delta_norm_lambda": 2e-4, "progressive_steps": [0] + list(range(20000, 54000, 2000)),
            "progressive_start": 20000, "progressive_step_every": 2000, "start_from_latent_avg": True,
            "learning_rate": 1e-4, "optim_name": "ranger", "train_decoder": False, "checkpoint_path": None,
            "stylegan_weights": "pretrained_models/stylegan2-ffhq-config-f.pt", "max_steps": 300000}
PSP_OPTS = {"exp_dir": "exp", "dataset_type": "ffhq_encode", "encoder_type": "GradualStyleEncoder", "input_nc": 3,
            "label_nc": 0, "output_size": 1024, "batch_size": 8, "learning_rate": 1e-4, "optim_name": "ranger",
            "train_decoder": False, "start_from_latent_avg": True, "learn_in_w": False, "lpips_lambda": 0.8,
            "id_lambda": 0.1, "l2_lambda": 1.0, "w_norm_lambda": 0, "resize_factors": None, "max_steps": 500000}
RESTYLE_OPTS = {"exp_dir": "exp", "dataset_type": "ffhq_encode", "encoder_type": "BackboneEncoder", "input_nc": 6,
                "input_ch": -1, "output_size": 1024, "n_iters_per_batch": 2, "start_from_latent_avg": True,
                "batch_size": 8, "learning_rate": 1e-4, "optim_name": "ranger", "moco_lambda": 0,
                "lpips_lambda": 0.8, "id_lambda": 0.1, "l2_lambda": 1.0, "w_norm_lambda": 0}


def _official(tmp_path, method, opts, gen_size=256, backbone="ir_se50", latent_avg=True, name="ck.pt"):
    """An official-layout file: full block counts (exact official key set), narrow tensors."""
    torch.manual_seed(0)
    g = Generator(gen_size, style_dim=512, n_mlp=8, channels=TINY).eval()
    nc = 6 if method.startswith("restyle") else 3
    enc = build_encoder(method, n_latent=g.n_latent, input_nc=nc, backbone=backbone, width=0.125, block_ch=8).eval()
    for m in enc.modules():  # non-trivial BN statistics, so eval-mode loading is really checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    assert set(enc.state_dict()) == set(official_encoder_layout(method, g.n_latent, backbone, nc))
    sd = {**{f"encoder.{k}": v for k, v in enc.state_dict().items()},
          **{f"decoder.{k}": v for k, v in g.state_dict().items()}}
    ck = {"state_dict": sd, "opts": dict(opts)}
    la = torch.randn(g.n_latent, 512) * 0.1
    if latent_avg:
        ck["latent_avg"] = la
    path = tmp_path / name
    torch.save(ck, path)
    return path, enc, g, (la if latent_avg else torch.zeros_like(la))


@pytest.mark.parametrize("method,opts", [("e4e", E4E_OPTS), ("psp", PSP_OPTS),
                                         ("e4e", {k: v for k, v in E4E_OPTS.items() if k != "encoder_type"}),
                                         ("psp", {})])
def test_official_e4e_psp_checkpoints(tmp_path, method, opts):
    path, enc, g, la = _official(tmp_path, method, opts)
    inv = load_inverter(path)
    assert inv.method == method and inv.n_latent == 14 and inv.input_size == 256
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(inv.invert(x), enc(x) + la, rtol=1e-5, atol=1e-5)
    if method == "e4e":
        assert inv.encoder.progressive_stage == "inference"


def test_official_e4e_cars_checkpoint(tmp_path):
    opts = {**E4E_OPTS, "dataset_type": "cars_encode"}
    path, enc, g, la = _official(tmp_path, "e4e", opts, gen_size=512)
    inv = load_inverter(path)
    assert inv.n_latent == 16 and inv.input_size == (192, 256) and inv.decoder.size == 512
    x = torch.rand(1, 3, 192, 256) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(inv.invert(x), enc(x) + la, rtol=1e-5, atol=1e-5)
        square = torch.rand(1, 3, 512, 512)  # a generated car: content in rows 64:448
        assert inv.invert(square).shape == (1, 16, 512)


def test_official_1024_checkpoint_has_18_rows_and_missing_latent_avg(tmp_path):
    path, enc, g, la = _official(tmp_path, "psp", PSP_OPTS, gen_size=1024, latent_avg=False)
    inv = load_inverter(path)
    assert inv.n_latent == 18 and inv.decoder.size == 1024
    assert torch.equal(inv.latent_avg, torch.zeros(18, 512))


@pytest.mark.parametrize("method,backbone", [("restyle_psp", "ir_se50"), ("restyle_e4e", "resnet34")])
def test_official_restyle_checkpoints(tmp_path, method, backbone):
    enc_type = {"restyle_psp": "BackboneEncoder", "restyle_e4e": "ResNetProgressiveBackboneEncoder"}[method]
    path, enc, g, la = _official(tmp_path, method, {**RESTYLE_OPTS, "encoder_type": enc_type}, backbone=backbone)
    inv = load_inverter(path)
    assert inv.method == method and inv.n_iters == 2 and inv.encoder.config()["backbone"] == backbone
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        w = inv.invert(x)
        avg = g.synthesis(la.unsqueeze(0))
        w1 = la + enc(torch.cat([x, avg], 1))
        w2 = w1 + enc(torch.cat([x, g.synthesis(w1)], 1))
    torch.testing.assert_close(w, w2, rtol=1e-4, atol=1e-4)


def test_official_opts_contradicting_keys(tmp_path):
    path, *_ = _official(tmp_path, "psp", {**PSP_OPTS, "encoder_type": "BackboneEncoder"})
    with pytest.raises(ValueError, match="contradicts"):
        load_inverter(path)


# --------------------------------------------------------------------------------------------- own format
@pytest.mark.parametrize("method", ["e4e", "w_encoder", "restyle_e4e"])
def test_own_inverter_round_trip(tmp_path, method):
    g = Generator(32, style_dim=16, n_mlp=2, channels=TINY).eval()
    kw = {"n_iters": 2} if method.startswith("restyle") else {}
    inv = get_inverter(method)(g, latent_avg=torch.randn(1, 16), input_size=32, small=True, **kw).eval()
    if hasattr(inv.encoder, "set_progressive_stage"):
        inv.encoder.set_progressive_stage(3)
    path = save_inverter(inv, tmp_path / "inv.pt", extra={"note": "test", "dir": tmp_path},
                         config={"model": {"method": method}})
    ck = load_checkpoint(path)  # weights_only=True with no allow-list: plain containers only
    assert ck["format"] == "e4e-lab-inverter" and ck["method"] == method and ck["extra"]["dir"] == str(tmp_path)
    inv2 = load_inverter(path)
    assert type(inv2) is type(inv) and inv2.input_size == 32
    assert getattr(inv2.encoder, "progressive_stage", None) == getattr(inv.encoder, "progressive_stage", None)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(inv2.invert(x), inv.invert(x))
    if method.startswith("restyle"):
        assert inv2.n_iters == 2


# --------------------------------------------------------------------------------------------- errors
def test_missing_file_names_the_path(tmp_path):
    p = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_generator(p)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_inverter(p)


def test_missing_registered_file_raises_weights_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("E4E_WEIGHTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsMissingError, match="e4e_ffhq_encode.pt"):
        load_inverter("e4e_ffhq")


def test_text_and_truncated_files(tmp_path):
    txt = tmp_path / "model.pt"
    txt.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_generator(txt)
    g = Generator(8, style_dim=8, n_mlp=1, channels=TINY)
    for legacy in (False, True):
        full = tmp_path / f"full{legacy}.pt"
        torch.save({"g_ema": g.state_dict()}, full, _use_new_zipfile_serialization=not legacy)
        cut = tmp_path / f"cut{legacy}.pt"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
            load_generator(cut)
        with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
            load_inverter(cut)


def test_wrong_kind_errors(tmp_path):
    g = Generator(8, style_dim=8, n_mlp=1, channels=TINY)
    gpath = save_generator(g, tmp_path / "g.pt")
    with pytest.raises(ValueError, match=r"this is a StyleGAN2 generator checkpoint, use .*load_generator"):
        load_inverter(gpath)
    inv = get_inverter("psp")(g, input_size=8, small=True)
    ipath = save_inverter(inv, tmp_path / "inv.pt")
    with pytest.raises(ValueError, match=r"this is an e4e-lab inverter checkpoint, use .*load_inverter"):
        load_generator(ipath)
    epath = tmp_path / "official.pt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in inv.encoder.state_dict().items()}, "opts": {}}, epath)
    with pytest.raises(ValueError, match=r"this is an encoder .* use .*load_inverter"):
        load_generator(epath)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(3)}, other)
    with pytest.raises(ValueError, match="not a StyleGAN2 generator checkpoint this harness knows"):
        load_generator(other)
    torch.save({"format": "e4e-lab-train", "step": 3}, other)
    with pytest.raises(ValueError, match="training"):
        load_inverter(other)


def test_init_encoder_from_irse50(tmp_path):
    from e4e.models.backbones import Backbone

    arcface = Backbone(112, 50, "ir_se", width=0.125).state_dict()
    path = tmp_path / "model_ir_se50.pth"
    torch.save(arcface, path)
    with pytest.raises(ValueError, match="IR-SE-50 ArcFace"):
        load_generator(path)
    from e4e.checkpoints import init_encoder_from_irse50

    enc = build_encoder("restyle_psp", n_latent=2, input_nc=6, width=0.125, block_ch=8)
    init_encoder_from_irse50(enc, path, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(enc.input_layer[0].weight[:, :3], arcface["input_layer.0.weight"])
    torch.testing.assert_close(enc.body[23].res_layer[5].fc2.weight, arcface["body.23.res_layer.5.fc2.weight"])
    small_units = build_encoder("psp", n_latent=2, small=True)
    with pytest.raises(ValueError, match="does not fit"):
        init_encoder_from_irse50(small_units, path)
