"""Pretrained encoder trunk (e4e/synth/trunk.py) and the config key model.trunk_init: pretraining
learns and writes a weights_only file, trunk_init copies exactly the trunk, mismatches are errors,
the committed asset fits the demo-preset encoders of the committed synth generator."""
import json
from pathlib import Path

import pytest
import torch

from e4e import config as C
from e4e.checkpoints import init_encoder_from_trunk, load_generator, save_trunk, trunk_state_dict
from e4e.models.stylegan2 import Generator
from e4e.synth.render import ATTRIBUTES
from e4e.synth.trunk import DEFAULT_PATH, TrunkRegressor, pretrain_trunk
from e4e.train import SYNTH_GENERATOR, SYNTH_TRUNK, _build_inverter

REPO = Path(__file__).resolve().parents[1]
POOLED = ("e4e", "psp", "w_encoder")  # the encoders that share the 3-channel trunk


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return Generator(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 8}).eval()


@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory):
    """A small-preset trunk with recognisable (non-initial) tensors."""
    net = TrunkRegressor()
    with torch.no_grad():
        for t in trunk_state_dict(net).values():
            if t.is_floating_point():
                t.add_(0.5)
    path = tmp_path_factory.mktemp("trunk") / "trunk.pt"
    save_trunk(net, path, dict(net.config(), input_size=32))
    return path


def build(gen, method, *dotlist, seed=0):
    cfg = C.build_config(dotlist=[f"model.method={method}", "model.encoder.small=true", f"seed={seed}", *dotlist])
    torch.manual_seed(seed)
    return _build_inverter(cfg, gen, torch.zeros(1, gen.style_dim), 32).encoder


def test_pretraining_lowers_the_loss_and_writes_a_weights_only_file(tmp_path, one_thread):
    out = tmp_path / "trunk.pt"
    prov = pretrain_trunk(out, steps=25, batch=16, fresh=8, gap_max=0.5, lr=3e-3, size=32, n_test=48,
                          log_every=5, progress=False)
    assert prov["test"]["mse_norm"] < 0.8 * prov["mse_norm_initial"]
    obj = torch.load(out, weights_only=True)
    assert obj["format"] == "e4e-lab-trunk"
    assert obj["arch"] == {"backbone": "ir_se50", "width": 0.125, "units": [1, 1, 1, 1], "input_nc": 3,
                           "input_size": 32}
    assert set(obj["state_dict"]) == set(trunk_state_dict(TrunkRegressor()))
    assert all(k.split(".")[0] in ("input_layer", "body") for k in obj["state_dict"])
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["steps"] == 25 and meta["batch"] == 16 and meta["seed"] == 0 and meta["git_sha"]
    assert list(meta["test"]["r2"]) == list(ATTRIBUTES) and list(meta["test_gap1"]["r2"]) == list(ATTRIBUTES)


@pytest.mark.parametrize("method", POOLED)
def test_trunk_init_copies_the_trunk_and_leaves_the_head(gen, trunk_file, method):
    ref = build(gen, method).state_dict()
    enc = build(gen, method, f"model.trunk_init={trunk_file}").state_dict()
    trunk = torch.load(trunk_file, weights_only=True)["state_dict"]
    assert trunk and set(trunk) == {k for k in enc if k.split(".")[0] in ("input_layer", "body")}
    for k, v in enc.items():
        torch.testing.assert_close(v, trunk[k] if k in trunk else ref[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(ref["input_layer.0.weight"], trunk["input_layer.0.weight"])


def test_six_channel_encoders_get_the_rgb_filters_first(gen, trunk_file):
    enc = build(gen, "restyle_psp", f"model.trunk_init={trunk_file}")
    trunk = torch.load(trunk_file, weights_only=True)["state_dict"]
    w = enc.input_layer[0].weight
    assert w.shape[1] == 6
    torch.testing.assert_close(w[:, :3], trunk["input_layer.0.weight"])
    torch.testing.assert_close(enc.body[3].res_layer[1].weight, trunk["body.3.res_layer.1.weight"])


def test_trunk_init_ir_se50_reads_model_ir_se50_from_the_weights_folder(gen, tmp_path, monkeypatch):
    from e4e.models.backbones import Backbone

    arcface = Backbone(112, 50, "ir_se", width=0.125).state_dict()
    torch.save(arcface, tmp_path / "model_ir_se50.pth")
    monkeypatch.setenv("E4E_WEIGHTS", str(tmp_path))
    enc = build(gen, "w_encoder", "model.encoder.small=false", "model.encoder.width=0.125", "model.trunk_init=ir_se50")
    for k, v in enc.state_dict().items():
        if k.split(".")[0] in ("input_layer", "body"):
            torch.testing.assert_close(v, arcface[k], rtol=0, atol=0, msg=k)
    with pytest.raises(C.ConfigError, match=r"model\.trunk_init='ir_se50'.*does not fit"):
        build(gen, "w_encoder", "model.trunk_init=ir_se50")


def test_a_mismatching_trunk_names_the_file_and_both_architectures(gen, tmp_path):
    wide = TrunkRegressor(width=0.25)
    path = tmp_path / "wide_trunk.pt"
    save_trunk(wide, path, wide.config())
    enc = build(gen, "psp")
    with pytest.raises(ValueError, match=r"wide_trunk\.pt.*'width': 0\.25.*'width': 0\.125"):
        init_encoder_from_trunk(enc, path)
    with pytest.raises(C.ConfigError, match=r"model\.trunk_init=.*wide_trunk\.pt"):
        build(gen, "e4e", f"model.trunk_init={path}")
    with pytest.raises(C.ConfigError, match="not found"):
        build(gen, "e4e", f"model.trunk_init={tmp_path / 'missing.pt'}")
    with pytest.raises(C.ConfigError, match="StyleGAN2 generator"):
        build(gen, "e4e", f"model.trunk_init={SYNTH_GENERATOR}")


def test_the_cli_prints_one_error_line(gen, tmp_path, capsys):
    from experiments.train import main

    rc = main(["--config", str(REPO / "experiments/configs/synth.yaml"), "model.encoder.small=false",
               "model.trunk_init=synth", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: model.trunk_init='synth'")
    assert "encoder_trunk_synth64.pt" in err[0] and "'width': 1.0" in err[0]


def test_the_committed_trunk_fits_the_demo_encoders_of_the_synth_generator():
    from experiments.grid import load_grid, resolve_config

    assert SYNTH_TRUNK == DEFAULT_PATH and SYNTH_TRUNK.stat().st_size < 1_000_000
    g = load_generator(SYNTH_GENERATOR)
    trunk = torch.load(SYNTH_TRUNK, weights_only=True)
    grid = load_grid(REPO / "experiments/grids/paper_ablation_synth.yaml", profile="demo")
    methods = {m.method: m for m in grid.members}
    for method in POOLED + ("restyle_e4e",):
        cfg = resolve_config(grid, methods[method])
        assert cfg.model.trunk_init == "synth" and cfg.model.encoder["small"] is True
        enc = _build_inverter(cfg, g, torch.zeros(1, g.style_dim), 64).encoder
        for k, v in trunk["state_dict"].items():
            if k != "input_layer.0.weight":
                torch.testing.assert_close(enc.state_dict()[k], v, rtol=0, atol=0, msg=k)
        torch.testing.assert_close(enc.input_layer[0].weight[:, :3], trunk["state_dict"]["input_layer.0.weight"])
