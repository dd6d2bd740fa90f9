"""Attribute network: tiny training reduces the error, save/load round trip, committed weights."""
import json

import numpy as np
import pytest
import torch

from e4e.synth.attrnet import DEFAULT_PATH, AttrNet, load_attrnet, train_attrnet
from e4e.synth.dataset import build_dataset
from e4e.synth.render import ATTRIBUTES, render, sample_attributes


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small kernels: one thread avoids sync overhead on a busy 2-core machine."""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    build_dataset(root, n_train=160, n_test=32, n_val=32, seed=0, workers=1, progress=False)
    return root


def test_api_shapes():
    net = AttrNet().eval()
    x = torch.zeros(2, 3, 64, 64)
    assert net(x).shape == (2, len(ATTRIBUTES)) and net.features(x).shape == (2, 256)
    assert net(torch.zeros(1, 3, 128, 128)).shape == (1, len(ATTRIBUTES))  # resized to 64
    assert AttrNet.ATTRIBUTES == ATTRIBUTES


def test_tiny_training_reduces_error_and_round_trips(tiny_data, tmp_path):
    out = tmp_path / "attrnet.pt"
    res = train_attrnet(tiny_data, out, steps=40, batch=16, lr=3e-3, seed=0, val_every=10, progress=False)
    assert res["val_mse_norm_best"] < 0.8 * res["val_mse_norm_initial"]
    assert set(res["test"]["r2"]) == set(ATTRIBUTES) and set(res["test"]["mae"]) == set(ATTRIBUTES)
    prov = json.loads(out.with_suffix(".json").read_text())
    assert prov["steps"] == 40 and prov["seed"] == 0 and "r2" in prov["test"]

    net = load_attrnet(out)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = torch.from_numpy(render(sample_attributes(3, np.random.default_rng(5)))).permute(0, 3, 1, 2).float() / 127.5 - 1
    again = load_attrnet(out)
    assert torch.equal(net(x), again(x)) and torch.equal(net.features(x), again.features(x))


def test_missing_weights_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-attrnet"):
        load_attrnet(tmp_path / "nope.pt")


@pytest.mark.skipif(not DEFAULT_PATH.is_file(), reason="committed attribute net not built")
def test_committed_attrnet_reads_fresh_renders():
    net = load_attrnet()
    a = sample_attributes(128, np.random.default_rng(123))
    x = torch.from_numpy(render(a)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        pred = net(x).numpy()
    r2 = 1 - ((pred - a) ** 2).sum(0) / ((a - a.mean(0)) ** 2).sum(0)
    for k in ("yaw", "smile", "age", "glasses", "hair_hue", "skin_tone", "bg_hue"):
        assert r2[ATTRIBUTES.index(k)] > 0.8, (k, r2[ATTRIBUTES.index(k)])
