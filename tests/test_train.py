"""The one trainer: every method learns, progressive stages, ablation switches, kill/resume into the
same MLflow run, Ranger state round-trip, missing-weights errors, DDP (2 gloo ranks)."""
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from e4e import config as C
from e4e import tracking as T
from e4e.models.stylegan2 import Generator
from e4e.optim import Ranger, build_optimizer
from e4e.train import ENCODER_METHODS, NonFiniteError, load_training_checkpoint, train
from e4e.weights import WeightsMissingError, locate

REPO = Path(__file__).resolve().parents[1]
TINY_ENCODER = {"small": True}  # the encoders' small preset (narrow trunk, one block per stage)


def tiny_generator(seed=0):
    torch.manual_seed(seed)
    return Generator(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 8}).eval()


@pytest.fixture(scope="module")
def gen():
    return tiny_generator()


@pytest.fixture(scope="module")
def images(gen):
    with torch.no_grad():
        x = gen.sample(torch.randn(8, 32, generator=torch.Generator().manual_seed(1)), noise_mode="const")
    return x.clamp(-1, 1)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def tiny_cfg(out_dir, method="e4e", *extra):
    return C.build_config(dotlist=[
        f"model.method={method}", f"out_dir={out_dir}", "batch_size=4", "max_steps=4", "log_every=1",
        "val_every=2", "image_every=1000", "ckpt_every=2", "loss.lpips_lambda=0", "loss.id_lambda=0",
        "model.restyle_iters=2", "model.noise_mode=const", "progressive.scale_with_steps=false",
        "progressive.start=1", "progressive.interval=1", "adversarial.r1_every=2", "optim.lr=1e-3",
        "data.hflip=false", "progress=false", *[f"model.encoder.{k}={v}" for k, v in TINY_ENCODER.items()],
        *extra])


def datasets(images):
    return torch.utils.data.TensorDataset(images[:4]), torch.utils.data.TensorDataset(images[4:8])


def history(run_id, key):
    return T.metric_steps(T.get_client(), run_id, key)


def values(run_id, key):
    return [m.value for m in sorted(T.get_client().get_metric_history(run_id, key), key=lambda m: m.step)]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ENCODER_METHODS)
def test_each_method_learns_a_fixed_batch(method, gen, images, mlflow_uri, tmp_path):
    fixed = torch.utils.data.TensorDataset(images[:4])
    cfg = tiny_cfg(tmp_path, method, "max_steps=30", "val_every=5", "ckpt_every=30", "optim.name=adam",
                   "delta_reg.enabled=false", "adversarial.enabled=false", "progressive.enabled=false")
    s = train(cfg, generator=gen, train_set=fixed, val_set=fixed)
    val = values(s["run_id"], "val/loss_l2")
    assert len(val) == 6
    assert val[-1] < 0.8 * val[0], val
    assert Path(s["final_checkpoint"]).is_file() and Path(s["best_checkpoint"]).is_file()
    run = T.get_client().get_run(s["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    for k in ("git_sha", "torch", "device", "method", "config_hash", "final_checkpoint"):
        assert k in tags
    assert tags["method"] == method and tags["config_hash"] == C.config_hash(cfg)
    assert run.data.params["model.method"] == method and run.data.params["optim.name"] == "adam"


def test_progressive_stages_switch_at_configured_steps(gen, images, mlflow_uri, tmp_path):
    train_set, val_set = datasets(images)
    cfg = tiny_cfg(tmp_path, "e4e", "max_steps=9", "progressive.start=2", "progressive.interval=3")
    s = train(cfg, generator=gen, train_set=train_set, val_set=val_set)
    assert values(s["run_id"], "train/progressive_stage") == [0, 0, 1, 1, 1, 2, 2, 2, 3]


def test_progressive_stage_controls_the_offsets(gen, images):
    from e4e.inverters import get_inverter
    from e4e.inverters import load_inverters
    from e4e.train import set_stage

    load_inverters()
    inv = get_inverter("e4e")(gen, latent_avg=gen.mean_latent(500), **TINY_ENCODER).eval()
    with torch.no_grad():
        set_stage(inv, 0)
        w = inv.invert(images[:2])
        assert torch.allclose(w, w[:, :1].expand_as(w), atol=1e-6)   # only w_0
        set_stage(inv, 2)
        w = inv.invert(images[:2])
        assert torch.allclose(w[:, 3:], w[:, :1].expand_as(w[:, 3:]), atol=1e-6)
        assert not torch.allclose(w[:, 1], w[:, 0])


@pytest.mark.parametrize("delta", [True, False])
@pytest.mark.parametrize("adv", [True, False])
@pytest.mark.parametrize("prog", [True, False])
def test_ablation_switches(delta, adv, prog, gen, images, mlflow_uri, tmp_path):
    train_set, val_set = datasets(images)
    cfg = tiny_cfg(tmp_path, "e4e", "max_steps=2", f"delta_reg.enabled={delta}", f"adversarial.enabled={adv}",
                   f"progressive.enabled={prog}")
    s = train(cfg, generator=gen, train_set=train_set, val_set=val_set)
    keys = set(T.get_client().get_run(s["run_id"]).data.metrics)
    assert ("train/loss_delta_reg" in keys) is delta
    assert ("train/loss_adv" in keys) is adv and ("train/loss_d" in keys) is adv
    assert values(s["run_id"], "train/progressive_stage") == ([0, 1] if prog else [7, 7])
    if delta and not prog:  # all offsets active from step 0: the regulariser acts on every row
        assert values(s["run_id"], "train/loss_delta_reg")[0] > 0


def test_a_zero_weight_switches_a_term_off_like_enabled_false(gen, images, mlflow_uri, tmp_path):
    """One rule: a loss term is on when its weight is > 0 and its switch (where it has one) is on."""
    train_set, val_set = datasets(images)
    s = train(tiny_cfg(tmp_path, "e4e", "max_steps=2", "delta_reg.weight=0", "adversarial.weight=0",
                       "progressive.enabled=false"), generator=gen, train_set=train_set, val_set=val_set)
    keys = set(T.get_client().get_run(s["run_id"]).data.metrics)
    assert "train/loss" in keys
    assert not keys & {"train/loss_delta_reg", "train/loss_adv", "train/loss_d", "train/loss_r1"}, keys
    assert load_training_checkpoint(tmp_path / "last.pt")["disc"] is None   # no discriminator was built


@pytest.mark.parametrize("method", ["e4e", "restyle_e4e"])
def test_killed_run_resumes_to_the_same_weights(method, gen, images, mlflow_uri, tmp_path):
    train_set, val_set = datasets(images)
    extra = ("max_steps=9", "ckpt_every=3", "val_every=2", "progressive.start=2", "progressive.interval=2",
             "model.noise_mode=random", "data.hflip=true", "adversarial.pool_size=3")
    ref = train(tiny_cfg(tmp_path / "ref", method, *extra), generator=gen, train_set=train_set, val_set=val_set)
    out = tmp_path / "killed"
    first = train(tiny_cfg(out, method, *extra), generator=gen, train_set=train_set, val_set=val_set, stop_after=5)
    assert first["stopped"] and first["step"] == 5       # killed 2 steps after the step-3 checkpoint
    second = train(tiny_cfg(out, method, *extra), generator=gen, train_set=train_set, val_set=val_set,
                   stop_after=4)
    assert second["stopped"] and second["step"] == 7 and second["run_id"] == first["run_id"]
    final = train(tiny_cfg(out, method, *extra), generator=gen, train_set=train_set, val_set=val_set)
    assert final["run_id"] == first["run_id"] and final["step"] == 9
    a, b = load_training_checkpoint(tmp_path / "ref" / "last.pt"), load_training_checkpoint(out / "last.pt")
    for k in a["inverter"]:
        assert torch.equal(a["inverter"][k], b["inverter"][k]), k
    for k in a["disc"]:
        assert torch.equal(a["disc"][k], b["disc"][k]), k
    assert final["final_losses"] == ref["final_losses"]
    for key in ("train/loss", "train/loss_l2", "train/loss_d"):
        assert history(final["run_id"], key) == list(range(1, 10)), key
    assert history(final["run_id"], "val/loss") == [2, 4, 6, 8, 9]
    assert history(final["run_id"], "train/loss_r1") == [1, 3, 5, 7, 9]   # 0-based steps 0, 2, 4, 6, 8
    assert T.get_client().get_run(final["run_id"]).info.status == "FINISHED"


def test_finished_run_is_not_retrained(gen, images, mlflow_uri, tmp_path):
    train_set, val_set = datasets(images)
    cfg = tiny_cfg(tmp_path, "psp", "max_steps=2", "delta_reg.enabled=false", "adversarial.enabled=false",
                   "progressive.enabled=false")
    s1 = train(cfg, generator=gen, train_set=train_set, val_set=val_set)
    s2 = train(cfg, generator=gen, train_set=train_set, val_set=val_set)
    assert s2["run_id"] == s1["run_id"] and s2["step"] == 2
    assert history(s2["run_id"], "train/loss") == [1, 2]


def test_changed_config_refuses_to_resume(gen, images, mlflow_uri, tmp_path):
    train_set, val_set = datasets(images)
    train(tiny_cfg(tmp_path, "e4e", "max_steps=2"), generator=gen, train_set=train_set, val_set=val_set)
    with pytest.raises(C.ConfigError, match="different configuration"):
        train(tiny_cfg(tmp_path, "e4e", "max_steps=2", "optim.lr=5e-4"), generator=gen, train_set=train_set)


def test_run_id_handed_in_is_used(gen, images, mlflow_uri, tmp_path):
    client = T.get_client()
    exp = T.get_or_create_experiment(client, "grid-test")
    run = client.create_run(exp)
    train_set, val_set = datasets(images)
    s = train(tiny_cfg(tmp_path, "w_encoder", "max_steps=2", "delta_reg.enabled=false", "adversarial.enabled=false",
                       "progressive.enabled=false"), run_id=run.info.run_id, generator=gen, train_set=train_set,
              val_set=val_set)
    assert s["run_id"] == run.info.run_id
    assert history(run.info.run_id, "train/loss") == [1, 2]


def test_missing_lpips_weights_stop_the_run(gen, images, mlflow_uri, tmp_path):
    if locate("alexnet") is not None:
        pytest.skip("AlexNet weights present on this machine")
    train_set, val_set = datasets(images)
    with pytest.raises(WeightsMissingError, match="alexnet"):
        train(tiny_cfg(tmp_path, "e4e", "loss.lpips_lambda=0.8"), generator=gen, train_set=train_set)
    assert not (tmp_path / "last.pt").exists()


def test_ranger_state_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    model(torch.randn(2, 3, 8, 8))
    x = torch.randn(16, 3, 8, 8)

    def run(m, opt, n):
        for _ in range(n):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()

    import copy

    a = copy.deepcopy(model)
    oa = build_optimizer("ranger", a.parameters(), 1e-2)
    assert isinstance(oa, Ranger)
    run(a, oa, 13)                                  # crosses two lookahead syncs (k=6)
    b = copy.deepcopy(model)
    ob = Ranger(b.parameters(), lr=1e-2)
    run(b, ob, 7)
    c = copy.deepcopy(b)
    oc = Ranger(c.parameters(), lr=1e-2)
    oc.load_state_dict(ob.state_dict())
    run(c, oc, 6)
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa, pc)
    loss0 = model(x).pow(2).mean()
    assert a(x).pow(2).mean() < loss0


def test_gradient_centralisation():
    p = torch.nn.Parameter(torch.zeros(3, 4))
    opt = Ranger([p], lr=1.0, k=100)
    p.grad = torch.ones(3, 4) * torch.arange(4.0)   # centralised: each row's mean removed
    opt.step()
    assert torch.allclose(p.data.sum(1), torch.zeros(3), atol=1e-5)


# ---------------------------------------------------------------------------------------------
DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from e4e import config as C
    from e4e.models.stylegan2 import Generator
    from e4e.train import train
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = Generator(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 8}).eval()
    with torch.no_grad():
        x = g.sample(torch.randn(8, 32, generator=torch.Generator().manual_seed(1)), noise_mode="const").clamp(-1, 1)
    out = sys.argv[1]
    cfg = C.build_config(dotlist=[f"out_dir={out}/run", "batch_size=2", "max_steps=2", "log_every=1", "val_every=2",
        "ckpt_every=2", "image_every=100", "loss.lpips_lambda=0", "loss.id_lambda=0", "progress=false",
        "progressive.scale_with_steps=false", "progressive.start=1", "progressive.interval=1",
        "model.encoder.small=true", "device=cpu"])
    s = train(cfg, generator=g, train_set=torch.utils.data.TensorDataset(x), val_set=torch.utils.data.TensorDataset(x[:2]))
    torch.save({"summary": s}, f"{out}/summary_{os.environ['RANK']}.pt")
""")


@pytest.mark.slow
def test_ddp_two_gloo_ranks_agree(tmp_path, mlflow_uri):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",  # own free port
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s0 = torch.load(tmp_path / "summary_0.pt")["summary"]
    s1 = torch.load(tmp_path / "summary_1.pt")["summary"]
    assert s0["run_id"] == s1["run_id"] and s0["step"] == s1["step"] == 2
    ck = load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert history(s0["run_id"], "train/loss") == [1, 2]
    # both ranks hold identical encoder weights (each summary carries its own rank's checksum)
    assert s0["param_checksum"] == s1["param_checksum"]


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
def test_delta_reg_is_the_official_unsquared_sum():
    from e4e.losses import delta_reg_loss

    w = torch.zeros(2, 4, 3)
    w[:, 1, 0] = 3.0    # ||w1 - w0|| = 3
    w[:, 2, 1] = 4.0    # ||w2 - w0|| = 4
    w[0, 3, 2] = 2.0    # image 0 only: batch mean 1
    assert float(delta_reg_loss(w)) == pytest.approx(8.0)
    assert float(delta_reg_loss(w, n_active=2)) == pytest.approx(3.0)   # only offsets of active rows
    assert float(delta_reg_loss(w, n_active=1)) == 0.0


def test_adversarial_losses():
    from e4e.losses import disc_loss, encoder_adv_loss, r1_penalty

    lin = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 2.0]]))
    w = torch.randn(5, 2, 3)
    assert float(r1_penalty(lin, w[:, 0])) == pytest.approx(9.0)      # ||grad||^2 = 1 + 4 + 4
    pred = lin(w.reshape(-1, 3))
    assert float(encoder_adv_loss(lin, w)) == pytest.approx(float(torch.nn.functional.softplus(-pred).mean()))
    assert float(disc_loss(torch.full((4, 1), 50.0), torch.full((4, 1), -50.0))) == pytest.approx(0.0, abs=1e-6)


def test_lpips_trunk_comes_from_the_local_file(tmp_path, monkeypatch):
    from standins import write_alexnet

    from e4e.losses import LPIPSLoss

    sd = torch.load(write_alexnet(tmp_path), weights_only=True)
    monkeypatch.setenv("E4E_WEIGHTS", str(tmp_path))
    lp = LPIPSLoss("alex")
    assert torch.equal(getattr(lp.model.net.slice1, "0").weight, sd["features.0.weight"])
    assert torch.equal(getattr(lp.model.net.slice5, "10").weight, sd["features.10.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(lp(x, x)) == 0.0 and float(lp(x, x.flip(-1))) > 0
    assert not any(p.requires_grad for p in lp.parameters())


def test_identity_and_feature_distance_terms():
    from e4e.losses import FeatureDistance, IdentityLoss, ReconstructionLoss

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    idl = IdentityLoss(net)
    x = torch.randn(3, 3, 16, 16)
    loss, sim = idl(x, x)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and float(sim) == pytest.approx(1.0)
    fd = FeatureDistance(lambda t: [net[0](t)])
    assert float(fd(x, x)) == 0.0 and float(fd(x, -x)) > 0
    rec = ReconstructionLoss(1.0, 0.5, 0.1, perceptual=fd, identity=idl)
    y = x.clone().requires_grad_(True)
    total, logs = rec(y + 0.1, x)
    assert set(logs) == {"loss_l2", "loss_lpips", "loss_id", "id_similarity"}
    total.backward()
    assert y.grad is not None
    assert set(ReconstructionLoss(1.0)(x, x)[1]) == {"loss_l2"}       # lambda 0 -> no term


def test_invert_cli_with_a_trained_checkpoint(gen, images, mlflow_uri, tmp_path):
    from PIL import Image

    from experiments.invert import main

    train_set, val_set = datasets(images)
    s = train(tiny_cfg(tmp_path / "run", "e4e", "max_steps=2"), generator=gen, train_set=train_set, val_set=val_set)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        arr = ((images[i].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).byte().numpy()
        Image.fromarray(arr).save(imgs / f"{i}.png")
    out = tmp_path / "out"
    assert main(["--checkpoint", s["final_checkpoint"], "--images", str(imgs), "--out", str(out),
                 "--batch-size", "2"]) == 0
    res = torch.load(out / "latents.pt")
    assert res["latents"].shape == (3, gen.n_latent, gen.style_dim) and res["method"] == "e4e"
    assert len(list((out / "recon").iterdir())) == 3


def test_data_workers_do_not_change_the_result(gen, images, mlflow_uri, tmp_path):
    ds = torch.utils.data.TensorDataset(images)   # 8 images, batch 4: the run crosses an epoch boundary
    extra = ("max_steps=3", "progressive.enabled=false", "adversarial.enabled=false", "data.hflip=true")
    a = train(tiny_cfg(tmp_path / "a", "psp", *extra), generator=gen, train_set=ds)
    b = train(tiny_cfg(tmp_path / "b", "psp", *extra, "data.num_workers=2"), generator=gen, train_set=ds)
    ka, kb = load_training_checkpoint(tmp_path / "a" / "last.pt"), load_training_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(ka["inverter"][k], kb["inverter"][k]) for k in ka["inverter"])
    assert a["final_losses"] == b["final_losses"] and ka["data_order"] == kb["data_order"] == {"epoch": 1, "pos": 4}


def test_image_grids_show_the_configured_edits(gen, images, mlflow_uri, tmp_path, monkeypatch):
    """images/step_N.png rows: inputs, inversions, then one row per ``image_edits`` entry."""
    from PIL import Image

    dirs = tmp_path / "directions"
    (dirs / "ffhq").mkdir(parents=True)
    torch.save(torch.randn(32, generator=torch.Generator().manual_seed(3)), dirs / "ffhq" / "up.pt")
    monkeypatch.setenv("E4E_DIRECTIONS", str(dirs))
    train_set, val_set = datasets(images)
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "e4e", "data.domain=ffhq", "max_steps=2", "image_every=2", "image_edits=[up:2, up:-2]")
    s = train(cfg, generator=gen, train_set=train_set, val_set=val_set)
    grid = np.asarray(Image.open(out / "images" / "step_0000002.png").convert("RGB"), dtype=np.float32)
    assert grid.shape[:2] == (4 * 34 + 2, 4 * 34 + 2)  # 4 rows (input, inversion, 2 edits) of 4 images
    rows = [grid[2 + 34 * r: 34 * (r + 1), 2:34] for r in range(4)]
    assert np.abs(rows[2] - rows[1]).mean() > 1 and np.abs(rows[3] - rows[1]).mean() > 1
    assert np.abs(rows[2] - rows[3]).mean() > 1
    arts = [a.path for a in T.get_client().list_artifacts(s["run_id"], "images")]
    assert "images/step_0000002.png" in arts


def test_missing_or_malformed_edit_stops_before_any_step(gen, images, mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("E4E_DIRECTIONS", str(tmp_path / "nowhere"))
    train_set, val_set = datasets(images)
    with pytest.raises(FileNotFoundError, match="no editing direction 'smile'"):
        train(tiny_cfg(tmp_path, "e4e", "data.domain=ffhq", "image_edits=[smile:3]"), generator=gen,
              train_set=train_set, val_set=val_set)
    assert not (tmp_path / "last.pt").exists()
    (tmp_path / "nowhere" / "ffhq").mkdir(parents=True)
    torch.save(torch.randn(1, 512), tmp_path / "nowhere" / "ffhq" / "smile.pt")  # a 512-d W direction
    with pytest.raises(C.ConfigError, match="does not fit this generator"):
        train(tiny_cfg(tmp_path, "e4e", "data.domain=ffhq", "image_edits=[smile:3]"), generator=gen,
              train_set=train_set, val_set=val_set)
    assert not (tmp_path / "last.pt").exists()
    with pytest.raises(C.ConfigError, match="direction:strength"):
        tiny_cfg(tmp_path, "e4e", "image_edits=[smile]")


# ---------------------------------------------------------------------------------------------
# every shipped experiment config trains (or stops with the weights error naming its file)
# ---------------------------------------------------------------------------------------------
SMOKE = ["max_steps=1", "batch_size=2", "log_every=1", "val_every=1", "image_every=1", "ckpt_every=1",
         "progress=false", "data.hflip=false", "model.restyle_iters=1", "adversarial.r1_every=1",
         *[f"model.encoder.{k}={v}" for k, v in TINY_ENCODER.items()]]


@pytest.fixture(scope="module")
def gen512():
    """Tiny 32 px generator with the real style_dim, so the synth directions fit its W+."""
    torch.manual_seed(0)
    return Generator(32, style_dim=512, n_mlp=2, channels={4: 16, 8: 16, 16: 8, 32: 8}).eval()


@pytest.mark.parametrize("method", ["e4e", "psp", "w_encoder", "restyle_e4e", "restyle_psp"])
def test_every_method_config_trains_on_synth(method, gen512, mlflow_uri, tmp_path):
    with torch.no_grad():
        x = gen512.sample(torch.randn(4, 512, generator=torch.Generator().manual_seed(1)), noise_mode="const")
    data = torch.utils.data.TensorDataset(x.clamp(-1, 1))
    cfg = C.build_config([REPO / "experiments/configs/synth.yaml", REPO / f"experiments/configs/{method}.yaml"],
                         [f"out_dir={tmp_path}", *SMOKE])
    assert cfg.model.method == method and cfg.image_edits  # synth's edit rows are exercised too
    s = train(cfg, generator=gen512, train_set=data, val_set=data)
    assert s["step"] == 1 and (tmp_path / "images" / "step_0000001.png").is_file()


@pytest.mark.parametrize("domain", ["ffhq", "cars", "horse", "church"])
def test_every_domain_config_names_its_missing_weights_then_trains(domain, gen, images, mlflow_uri, tmp_path):
    """Real-domain configs need LPIPS-alex and ArcFace/MoCo files: without them the run stops at start-up
    with the error naming the file; with those lambdas at 0 the rest of the config trains."""
    train_set, val_set = datasets(images)
    base = [REPO / f"experiments/configs/{domain}.yaml"]
    cfg = C.build_config(base, [f"out_dir={tmp_path / 'a'}", *SMOKE])
    wanted = [("alexnet", cfg.loss.lpips_lambda), ("ir_se50" if domain == "ffhq" else "moco_v2", cfg.loss.id_lambda)]
    if any(locate(n) is not None for n, _ in wanted):
        pytest.skip("pretrained files present on this machine")
    with pytest.raises(WeightsMissingError, match="alexnet"):
        train(cfg, generator=gen, train_set=train_set, val_set=val_set)
    cfg = C.build_config(base, [f"out_dir={tmp_path / 'b'}", *SMOKE, "loss.lpips_lambda=0"])
    with pytest.raises(WeightsMissingError, match="ir_se50|arcface" if domain == "ffhq" else "moco"):
        train(cfg, generator=gen, train_set=train_set, val_set=val_set)
    assert not (tmp_path / "a" / "last.pt").exists() and not (tmp_path / "b" / "last.pt").exists()
    cfg = C.build_config(base, [f"out_dir={tmp_path / 'c'}", *SMOKE, "loss.lpips_lambda=0", "loss.id_lambda=0"])
    assert train(cfg, generator=gen, train_set=train_set, val_set=val_set)["step"] == 1


@pytest.mark.parametrize("method", ["e4e", "restyle_e4e"])
def test_bf16_autocast_learns_close_to_fp32(method, gen, images, mlflow_uri, tmp_path):
    """precision=bf16 is opt-in: it trains (finite, the loss falls) and stays near the fp32 result."""
    fixed = torch.utils.data.TensorDataset(images[:4])
    out = {}
    for prec in ("fp32", "bf16"):
        cfg = tiny_cfg(tmp_path / prec, method, "max_steps=20", "val_every=5", "ckpt_every=20", "optim.name=adam",
                       f"precision={prec}", "delta_reg.enabled=true", "adversarial.enabled=true")
        s = train(cfg, generator=gen, train_set=fixed, val_set=fixed)
        val = values(s["run_id"], "val/loss_l2")
        assert all(math.isfinite(v) for v in val) and val[-1] < 0.9 * val[0], (prec, val)
        out[prec] = val[-1]
    assert out["bf16"] == pytest.approx(out["fp32"], rel=0.25)


def test_precision_and_non_finite_values_are_validated(tmp_path):
    with pytest.raises(C.ConfigError, match="precision"):
        tiny_cfg(tmp_path, "e4e", "precision=fp16")
    for bad in ("optim.lr=inf", "delta_reg.weight=nan", "loss.l2_lambda=-inf"):
        with pytest.raises(C.ConfigError, match="finite|>= 0"):
            tiny_cfg(tmp_path, "e4e", bad)


def test_non_finite_loss_stops_at_once_and_keeps_the_last_finite_checkpoint(gen, images, mlflow_uri, tmp_path):
    fixed = torch.utils.data.TensorDataset(images[:4])
    cfg = tiny_cfg(tmp_path, "e4e", "max_steps=4", "ckpt_every=2", "optim.name=adam")
    train(cfg, generator=gen, train_set=fixed, val_set=None)           # 4 finite steps, last.pt at step 4
    before = (tmp_path / "last.pt").read_bytes()
    blown = tiny_cfg(tmp_path, "e4e", "max_steps=8", "ckpt_every=2", "optim.name=adam", "optim.lr=1e30")
    blown.out_dir = str(tmp_path / "blown")
    with pytest.raises(NonFiniteError, match=r"step \d+: .*loss"):
        train(blown, generator=gen, train_set=fixed, val_set=None)
    ck = torch.load(tmp_path / "blown" / "last.pt", weights_only=True) if (tmp_path / "blown" / "last.pt").exists() else None
    if ck is not None:  # every checkpoint written before the blow-up is finite
        assert all(torch.isfinite(v).all() for v in ck["inverter"].values() if torch.is_tensor(v) and v.is_floating_point())
    assert (tmp_path / "last.pt").read_bytes() == before
