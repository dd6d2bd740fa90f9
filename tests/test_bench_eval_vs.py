"""bench/bench_eval_vs.py: each version evaluates the same checkpoint in its own process."""
import json
import math

import pytest
import torch

from bench import bench_eval_vs as B


def test_compare_values_splits_equal_and_different_names():
    ref = {"a": 1.0, "b": 2.0, "c": math.nan, "only_ref": 0.0}
    this = {"a": 1.0 + 1e-9, "b": 2.1, "c": math.nan, "only_this": 0.0}
    assert B.compare_values(ref, this) == (["a", "c"], ["b"])


def test_eval_vs_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    assert B.main(["--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: checkpoint {tmp_path / 'none.pt'} not found"]


@pytest.mark.slow
def test_eval_vs_times_both_versions_and_compares_their_values(tmp_path):
    from e4e.checkpoints import load_generator, save_inverter
    import e4e.inverters.encoder  # noqa: F401  (registers e4e)
    from e4e.inverters import get_inverter
    from e4e.synth.dataset import build_dataset

    g = load_generator(str(B.ROOT / "e4e" / "synth" / "assets" / "generator_synth64.pt")).eval()
    torch.manual_seed(0)
    inv = get_inverter("e4e")(g, latent_avg=g.mean_latent(500), input_size=64, small=True).eval()
    ckpt = save_inverter(inv, tmp_path / "inv.pt")
    build_dataset(tmp_path / "data", n_train=1, n_val=1, n_test=4, seed=0, workers=1)
    # this checkout as its own reference: two processes, the same code, a real ratio and equal values
    assert B.main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "data" / "test"), "--n", "4",
                   "--ref-path", str(B.ROOT), "--rounds", "1", "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    (rnd,) = r["rounds"]
    assert rnd["ref"]["cold"] > 0 and rnd["this"]["warm"] > 0
    assert not r["different"] and any(k.startswith("edit_smile") for k in r["equal"])
    assert "l2" in r["equal"] and "latent_dist_w" in r["equal"]
