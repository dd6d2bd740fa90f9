"""Distillation of the renderer into the StyleGAN2 generator (e4e/synth/distill.py), on tiny configs."""
import json

import numpy as np
import pytest
import torch

from e4e.checkpoints import load_generator
from e4e.synth import distill as D
from e4e.synth.attrnet import load_attrnet
from e4e.synth.render import ATTRIBUTES, sample_attributes

TINY = dict(style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8, 64: 8}, batch=2, threads=1,
            log_every=2, ckpt_every_minutes=1e9, decay_frac=0.0)


def test_attributes_from_noise_has_the_sampler_law():
    n = 40_000
    a = D.attributes_from_noise(np.random.default_rng(0).standard_normal((n, D.N_NOISE)))
    b = sample_attributes(n, np.random.default_rng(1))
    assert a.shape == b.shape == (n, len(ATTRIBUTES))
    # means, spreads and the deliberate correlations (age -> glasses, age -> hair_length) agree
    np.testing.assert_allclose(a.mean(0), b.mean(0), atol=0.02)
    np.testing.assert_allclose(a.std(0), b.std(0), atol=0.02)
    ia, ig, ih = ATTRIBUTES.index("age"), ATTRIBUTES.index("glasses"), ATTRIBUTES.index("hair_length")
    for i, j in ((ia, ig), (ia, ih)):
        assert abs(np.corrcoef(a[:, i], a[:, j])[0, 1] - np.corrcoef(b[:, i], b[:, j])[0, 1]) < 0.03
    assert (a[:, ig] > 0).mean() == pytest.approx((b[:, ig] > 0).mean(), abs=0.01)


def test_targets_are_a_function_of_the_normalised_z():
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    t1, a1 = D.targets(z)
    t2, a2 = D.targets(z * 2.5)  # the mapping network pixel-normalises z first
    torch.testing.assert_close(a1, a2, atol=1e-6, rtol=0)
    assert (t1 - t2).abs().max() <= 1 / 127.5 + 1e-6  # at most one 8-bit level where a rounding tips
    assert t1.shape == (3, 3, 64, 64) and t1.min() >= -1 and t1.max() <= 1
    assert not torch.equal(t1[0], t1[1])


def test_config_rejects_non_finite_and_unknown_keys():
    with pytest.raises(ValueError, match="lr"):
        D.DistillConfig(lr=float("inf"))
    with pytest.raises(ValueError, match="unknown distill keys"):
        D.DistillConfig.from_dict({"lrr": 1.0})


def test_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    cfg = D.DistillConfig(out_dir=str(tmp_path), steps=40, lr=5e-3, **{**TINY, "batch": 4})
    tr = D.DistillTrainer(cfg, load_attrnet(), resume=False, log=lambda s: None)
    first = np.mean([tr.losses(*tr.batch(s))["total"].item() for s in range(3)])
    tr.fit()
    last = np.mean([tr.losses(*tr.batch(s))["total"].item() for s in range(3)])
    assert last < 0.8 * first


def test_resume_continues_bit_identically(tmp_path):
    net = load_attrnet()
    full = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path / "a"), steps=4, **TINY), net, log=lambda s: None)
    full.fit()
    half = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path / "b"), steps=2, **TINY), net, log=lambda s: None)
    half.fit()
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    ck["config"]["steps"] = 4
    torch.save(ck, tmp_path / "b" / "last.pt")
    resumed = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path / "b"), steps=4, **TINY), net,
                               log=lambda s: None)
    assert resumed.step == 2
    resumed.fit()
    for (k, a), b in zip(full.g_ema.state_dict().items(), resumed.g_ema.state_dict().values()):
        assert torch.equal(a, b), k


def test_export_writes_a_rosinality_generator_with_provenance(tmp_path):
    tr = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path), steps=2, **TINY), load_attrnet(),
                          log=lambda s: None)
    tr.fit()
    out = tmp_path / "g.pt"
    info = D.export(tmp_path / "last.pt", out, grid=tmp_path / "grid.png", n_quality=40, command="test")
    g = load_generator(out)
    assert g.style_dim == 32 and g.latent_avg.shape == (32,)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["steps"] == 2 and meta["command"] == "test" and (tmp_path / "grid.png").is_file()
    q = meta["quality"]
    assert set(q["spread_ratio"]) == set(ATTRIBUTES) and q["fid_domain_floor"] < q["fid_domain"]
    assert info["quality"] == q


def test_region_weights_emphasise_the_features_and_keep_mean_one():
    w = D.region_weights(64, 4.0)
    assert w.shape == (1, 1, 64, 64) and abs(w.mean().item() - 1) < 1e-6
    assert w[0, 0, 30, 32] > w[0, 0, 2, 2]          # eye band (v ~ -0.06) vs the top-left corner
    assert torch.equal(D.region_weights(64, 0.0), torch.ones(1, 1, 64, 64))


def test_resume_with_other_settings_records_a_phase(tmp_path):
    net = load_attrnet()
    D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path), steps=2, **TINY), net, log=lambda s: None).fit()
    tr = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path), steps=3, region_weight=2.0, **TINY), net,
                          log=lambda s: None)
    tr.fit()
    phases = torch.load(tmp_path / "last.pt", weights_only=True)["phases"]
    assert [p["from_step"] for p in phases] == [0, 2] and phases[1]["config"]["region_weight"] == 2.0


SHARPEN = dict(adv_weight=0.05, edge_weight=1.0, r1_every=2)


def test_sharpening_fine_tune_starts_from_a_generator_and_resumes_bit_identically(tmp_path):
    """init_from loads G and G_ema from a rosinality file; the patch discriminator and its optimiser
    are checkpointed, so a run split in two ends with the same weights as one run."""
    net = load_attrnet()
    base = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path / "base"), steps=1, **TINY), net,
                            log=lambda s: None)
    base.fit()
    D.export(tmp_path / "base" / "last.pt", tmp_path / "g.pt", n_quality=20)
    init = str(tmp_path / "g.pt")
    start = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path / "x"), steps=0, init_from=init, **SHARPEN,
                                             **TINY), net, log=lambda s: None)
    ref = load_generator(init).state_dict()
    assert all(torch.equal(ref[k], v) for k, v in start.g_ema.state_dict().items())
    full = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path / "a"), steps=4, init_from=init, **SHARPEN,
                                            **TINY), net, log=lambda s: None)
    full.fit()
    assert {"edge", "g_adv", "d", "r1"} <= set(full.history[-1]) | set(full.history[0])
    half = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path / "b"), steps=2, init_from=init, **SHARPEN,
                                            **TINY), net, log=lambda s: None)
    half.fit()
    assert "d" in torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    resumed = D.DistillTrainer(D.DistillConfig(out_dir=str(tmp_path / "b"), steps=4, init_from=init, **SHARPEN,
                                               **TINY), net, log=lambda s: None)
    assert resumed.step == 2
    resumed.fit()
    for (k, a), b in zip(full.g_ema.state_dict().items(), resumed.g_ema.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(full.d.state_dict().items(), resumed.d.state_dict().values()):
        assert torch.equal(a, b), k
    # the fine-tune's export carries its starting generator's provenance, even when it overwrites that file
    parent = json.loads((tmp_path / "g.json").read_text())
    D.export(tmp_path / "a" / "last.pt", tmp_path / "g.pt", n_quality=20, command="fine-tune")
    info = json.loads((tmp_path / "g.json").read_text())
    assert info["command"] == "fine-tune" and info["initialised_from"] == {"file": init, "provenance": parent}


def test_edges_ignore_a_shift_and_shrink_under_blur():
    x = torch.randn(2, 3, 8, 8)
    h, v = D.image_edges(x)
    assert h.shape == (2, 3, 8, 7) and v.shape == (2, 3, 7, 8)
    hc, vc = D.image_edges(x + 0.7)  # a constant shift keeps every edge
    assert torch.allclose(h, hc, atol=1e-5) and torch.allclose(v, vc, atol=1e-5)
    hb, _ = D.image_edges(torch.nn.functional.avg_pool2d(x, 3, 1, 1))  # blur shrinks them
    assert hb.abs().mean() < h.abs().mean()


def test_cli_reads_exponent_floats(tmp_path, capsys):
    from experiments.synth import main

    with pytest.raises(SystemExit) as e:
        main(["distill", "--out", str(tmp_path), "--steps", "0", "lr=1e-7", "nope=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "lr" not in err.split("valid")[0]
