"""Typed config: defaults = official recipe, YAML deltas + includes, dotlist, validation, hashing, CLI."""
from pathlib import Path

import pytest
import yaml

from e4e import config as C
from e4e.train import progressive_schedule, progressive_stage

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
METHODS = ("e4e", "psp", "w_encoder", "restyle_e4e", "restyle_psp")
DOMAINS = ("synth", "ffhq", "cars", "horse", "church")


def test_defaults_are_the_official_recipe():
    c = C.TrainConfig()
    assert (c.loss.l2_lambda, c.loss.lpips_lambda, c.loss.id_lambda, c.loss.lpips_net) == (1.0, 0.8, 0.1, "alex")
    assert (c.delta_reg.enabled, c.delta_reg.weight) == (True, 2e-4)
    a = c.adversarial
    assert (a.enabled, a.weight, a.d_lr, a.r1_gamma, a.r1_every, a.pool_size) == (True, 0.1, 2e-5, 10.0, 16, 50)
    assert (c.progressive.enabled, c.progressive.start, c.progressive.interval) == (True, 20000, 2000)
    assert (c.optim.name, c.optim.lr, c.batch_size) == ("ranger", 1e-4, 8)
    p = c.projection
    assert (p.steps, p.lr, p.w_avg_samples, p.noise_reg_weight, p.perceptual) == (1000, 0.1, 10000, 1e5, "lpips_vgg")


def test_merge_order_yaml_includes_then_dotlist(tmp_path):
    (tmp_path / "base.yaml").write_text("batch_size: 4\noptim: {lr: 0.001}\n")
    (tmp_path / "exp.yaml").write_text("defaults: [base.yaml]\nbatch_size: 6\nmodel: {method: psp, encoder: {width: 8}}\n")
    cfg = C.build_config(tmp_path / "exp.yaml", ["optim.lr=3e-4", "model.encoder.small=true", "method=w_encoder"])
    assert cfg.batch_size == 6                      # exp.yaml overrides its include
    assert cfg.optim.lr == pytest.approx(3e-4)      # dotlist overrides YAML ("3e-4" parsed as float)
    assert cfg.model.encoder == {"width": 8, "small": True}   # dict fields merge
    assert cfg.model.method == "w_encoder"          # alias
    assert cfg.delta_reg.weight == 2e-4             # untouched default


def test_base_included_twice_applies_once(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 1\n")
    (tmp_path / "a.yaml").write_text("defaults: [base.yaml]\nseed: 5\n")
    (tmp_path / "b.yaml").write_text("defaults: [base.yaml]\nbatch_size: 2\n")
    cfg = C.build_config([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert (cfg.seed, cfg.batch_size) == (5, 2)


@pytest.mark.parametrize("text,expected", [("false", False), ("False", False), ("0", False), ("no", False),
                                           ("true", True), ("TRUE", True), ("1", True), ("on", True)])
def test_bool_strings(text, expected):
    assert C.build_config(dotlist=[f"delta_reg.enabled={text}"]).delta_reg.enabled is expected


def test_unknown_key_suggests_close_match():
    with pytest.raises(C.ConfigError, match=r"unknown config key 'batch_sise'.*Did you mean 'batch_size'"):
        C.build_config(dotlist=["batch_sise=3"])
    with pytest.raises(C.ConfigError, match=r"'adversarial.r1_gama'.*adversarial.r1_gamma.*Valid keys"):
        C.build_config(dotlist=["adversarial.r1_gama=3"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("loss: {l2_lamda: 1.0}\n")
    with pytest.raises(C.ConfigError, match=r"loss.l2_lamda.*bad.yaml.*loss.l2_lambda"):
        C.build_config(f)


@pytest.mark.parametrize("item,pattern", [
    ("batch_size=abc", "batch_size.*integer"),
    ("batch_size=2.5", "batch_size.*integer"),
    ("optim.lr=fast", "optim.lr.*number"),
    ("delta_reg.enabled=maybe", "delta_reg.enabled.*boolean"),
    ("model.method=e5e", "model.method.*one of.*Did you mean 'e4e'"),
    ("batch_size=0", "batch_size.*> 0"),
    ("loss.l2_lambda=-1", "l2_lambda.*>= 0"),
    ("data=3", "section 'data'.*mapping"),
    ("no_equals_sign", "key.sub=value"),
])
def test_bad_values(item, pattern):
    with pytest.raises(C.ConfigError, match=pattern):
        C.build_config(dotlist=[item])


def test_yaml_wrong_type(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("max_steps: [1, 2]\n")
    with pytest.raises(C.ConfigError, match="max_steps"):
        C.build_config(f)


def test_config_hash_ignores_run_location():
    a = C.build_config(dotlist=["out_dir=/tmp/a", "device=cpu", "log_every=3"])
    b = C.build_config(dotlist=["out_dir=/tmp/b", "device=cuda", "log_every=7", "data.num_workers=4"])
    c = C.build_config(dotlist=["optim.lr=2e-4"])
    assert C.config_hash(a) == C.config_hash(b) == C.config_hash(C.TrainConfig())
    assert C.config_hash(c) != C.config_hash(a)


def test_yaml_round_trip(tmp_path):
    cfg = C.build_config(dotlist=["model.encoder.width=16", "adversarial.enabled=false", "optim.name=adam"])
    path = C.save_yaml(cfg, tmp_path / "resolved.yaml")
    again = C.from_dict(yaml.safe_load(path.read_text()))
    assert again == cfg and C.config_hash(again) == C.config_hash(cfg)


def test_shipped_configs_load():
    for m in METHODS:
        assert C.build_config(CONFIGS / f"{m}.yaml").model.method == m
    for d in DOMAINS:
        cfg = C.build_config([CONFIGS / f"{d}.yaml", CONFIGS / "psp.yaml"])
        assert cfg.data.domain == d and cfg.model.method == "psp" and not cfg.delta_reg.enabled
    assert C.build_config(CONFIGS / "cars.yaml").loss.id_lambda == 0.5
    assert C.build_config(CONFIGS / "ffhq.yaml").loss.id_kind == "arcface"
    n_all = len(C.to_flat_dict(C.TrainConfig()))

    def n_leaves(d):
        return sum(n_leaves(v) if isinstance(v, dict) and v else 1 for v in d.values())

    for f in CONFIGS.glob("*.yaml"):   # deltas only: never a full dump
        assert n_leaves(yaml.safe_load(f.read_text()) or {}) < n_all // 4, f


def test_progressive_schedule_scaling():
    cfg = C.build_config(dotlist=["max_steps=3000"])
    assert progressive_schedule(cfg) == (200, 20)          # 20000, 2000 scaled by 3000 / 300000
    cfg = C.build_config(dotlist=["max_steps=300000"])
    assert progressive_schedule(cfg) == (20000, 2000)
    cfg = C.build_config(dotlist=["max_steps=10", "progressive.scale_with_steps=false"])
    assert progressive_schedule(cfg) == (20000, 2000)
    assert [progressive_stage(s, 5, 2, 3) for s in range(14)] == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]


def test_cli_print_config_and_help(capsys):
    from experiments.train import main

    assert main(["--config", str(CONFIGS / "synth.yaml"), "--print-config", "max_steps=7", "method=psp"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)
    assert resolved["max_steps"] == 7 and resolved["model"]["method"] == "psp" and "config_hash" in out
    assert main(["--print-config", "batch_sise=2"]) == 2
    assert "Did you mean 'batch_size'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "adversarial.r1_gamma" in help_text and "default: 10.0" in help_text and "--print-config" in help_text


def test_encoder_keys_match_the_encoder_constructor():
    import inspect

    from e4e.config import ENCODER_KEYS
    from e4e.models.encoders import EncoderBase

    params = set(inspect.signature(EncoderBase.__init__).parameters) - {"self", "n_latent", "style_dim", "input_size"}
    assert params == set(ENCODER_KEYS)


def test_one_override_grammar_reads_exponent_floats_and_yaml():
    from e4e.config import ConfigError, parse_dotlist, parse_value

    assert parse_value("1e-7") == 1e-7 and isinstance(parse_value("3E4"), float)
    assert parse_value("1.5e-3") == 1.5e-3 and parse_value("7") == 7 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("e4e") == "e4e" and parse_value("1e") == "1e"
    assert parse_dotlist(["optim.lr=1e-4", "--seed=3", "name="]) == {"optim.lr": 1e-4, "seed": 3, "name": ""}
    assert parse_value("4:16") == "4:16" and parse_value("cuda:0") == "cuda:0"  # no YAML 1.1 base-60 ints
    with pytest.raises(ConfigError, match="empty key"):
        parse_dotlist(["=3"])
    with pytest.raises(ConfigError, match="not key=value"):
        parse_dotlist(["lr"])
