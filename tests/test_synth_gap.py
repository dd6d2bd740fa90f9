"""Realism gap of the synth domain: gap 0 is the clean renderer, details grow with the gap, and every
"real" image is a deterministic function of its own attributes and seed."""
import hashlib
import json

import numpy as np
import pytest

from e4e.synth import render as render_mod
from e4e.synth.dataset import DEFAULT_GAP, build_dataset, image_seeds, read_attributes
from e4e.synth.render import (BEYOND_MAX, BEYOND_RANGE, REALISM_DETAILS, attr_index, default_attributes,
                              render, sample_attributes, stretch_attributes)
from experiments.synth import build_parser, main

# sha256 of render(sample_attributes(16, default_rng(0))) by the renderer before the gap stage existed
# (commit 509c68b): the clean path must stay bit-identical, since the generator is trained on it.
CLEAN_DIGEST = "090bdff40988aa61bdeb3caeb30ca2ae14e5ad6d041597e47245855cd47d70c5"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small kernels: one thread avoids sync overhead on a busy 2-core machine."""


def _real(attrs, gap, seeds, **kw):
    """A "real" image as the data set renders it: stretched attributes, then the gap details."""
    return render(stretch_attributes(attrs, gap, seeds), gap=gap, seeds=seeds, **kw)


def _mad(x, y):
    return np.abs(x.astype(int) - y.astype(int)).mean()


def test_gap_zero_is_the_clean_renderer(monkeypatch):
    a = sample_attributes(16, np.random.default_rng(0))
    clean = render(a)
    assert hashlib.sha256(clean.tobytes()).hexdigest() == CLEAN_DIGEST, "the clean renderer's output changed"

    def no_details(*args, **kw):
        raise AssertionError("gap 0 must not draw details")

    monkeypatch.setattr(render_mod, "_RealismGap", no_details)
    seeds = [(9, i) for i in range(16)]
    assert np.array_equal(render(a, gap=0.0, seeds=seeds), clean)
    assert np.array_equal(_real(a, 0.0, seeds), clean)


def test_gap_changes_images_more_with_larger_gap():
    a = sample_attributes(24, np.random.default_rng(1))
    seeds = [(1, i) for i in range(24)]
    clean = render(a)
    mads = [_mad(_real(a, g, seeds), clean) for g in (0.25, 0.5, 1.0)]
    assert 0.5 < mads[0] < mads[1] < mads[2], mads
    # the details alone (no attribute stretching) grow too, and every image gets some
    details = [render(a, gap=g, seeds=seeds) for g in (0.25, 1.0)]
    assert _mad(details[0], clean) < _mad(details[1], clean)
    assert np.abs(details[0].astype(int) - clean).max((1, 2, 3)).min() > 3


def test_same_seeds_same_bytes_other_seeds_other_details():
    a = sample_attributes(6, np.random.default_rng(2))
    seeds = [(2, i) for i in range(6)]
    x = _real(a, 0.5, seeds)
    assert x.tobytes() == _real(a, 0.5, seeds).tobytes()
    y = _real(a, 0.5, [(3, i) for i in range(6)])
    assert all(not np.array_equal(x[i], y[i]) for i in range(6))


def test_real_image_depends_only_on_its_row_and_seed():
    a = sample_attributes(10, np.random.default_rng(3))
    seeds = [(4, 0, i) for i in range(10)]
    x = _real(a, 0.8, seeds)
    assert np.array_equal(x[7:8], _real(a[7:8], 0.8, seeds[7:8]))
    assert np.array_equal(x, _real(a, 0.8, seeds, chunk=3))
    order = np.random.default_rng(0).permutation(10)
    assert np.array_equal(x[order], _real(a[order], 0.8, [seeds[i] for i in order], chunk=4))
    # a plain int seed per image works too
    assert np.array_equal(render(a[:2], gap=0.8, seeds=[5, 6])[1:], render(a[1:2], gap=0.8, seeds=[6]))


def test_stretch_attributes_pushes_yaw_and_smile_past_their_range():
    a = sample_attributes(400, np.random.default_rng(4))
    seeds = [(5, i) for i in range(400)]
    assert np.array_equal(stretch_attributes(a, 0.0, seeds), a)
    s = stretch_attributes(a, 1.0, seeds)
    others = [j for j in range(a.shape[1]) if j not in [attr_index(k) for k in BEYOND_RANGE]]
    assert np.array_equal(s[:, others], a[:, others])
    for name in BEYOND_RANGE:
        j = attr_index(name)
        changed = s[:, j] != a[:, j]
        assert 0.1 < changed.mean() < 0.3, name  # BEYOND_RATE of the images at gap 1
        assert np.all(np.abs(s[changed, j]) > 1) and np.abs(s[:, j]).max() <= 1 + BEYOND_MAX + 1e-6
        assert np.all(np.sign(s[changed, j]) == np.sign(a[changed, j]) + (a[changed, j] == 0))
    assert np.array_equal(stretch_attributes(a[5:9], 1.0, seeds[5:9]), s[5:9])
    small = stretch_attributes(a, 0.25, seeds)
    assert (small != a).sum() < (s != a).sum()


def test_render_beyond_range_only_with_gap():
    a = default_attributes(2)
    a[:, attr_index("yaw")] = [1.0, 1.25]
    assert np.array_equal(*render(a))  # the clean renderer clips to the spec range
    x = render(a, gap=1.0, seeds=[0, 0])  # same seed, so only the yaw differs
    assert _mad(x[0], x[1]) > 0.5


def test_gap_argument_checks():
    a = default_attributes(3)
    with pytest.raises(ValueError, match="one per image"):
        render(a, gap=0.5)
    with pytest.raises(ValueError, match="one per image"):
        render(a, gap=0.5, seeds=[1, 2])
    with pytest.raises(ValueError, match="gap must be >= 0"):
        render(a, gap=-0.1, seeds=[1, 2, 3])


def test_build_dataset_gap_meta_csv_and_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    kw = dict(n_train=6, n_test=4, n_val=2, seed=7, workers=1, progress=False)
    build_dataset(a, chunk=4, gap=0.6, **kw)
    build_dataset(b, chunk=5, gap=0.6, **kw)
    build_dataset(c, gap=0.0, **kw)
    meta = json.loads((a / "meta.json").read_text())
    assert meta["gap"] == 0.6 and set(meta["realism_gap"]["details"]) == set(REALISM_DETAILS)
    assert json.loads((c / "meta.json").read_text())["gap"] == 0.0
    for p in sorted(a.rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (b / p.relative_to(a)).read_bytes(), p  # chunking does not matter
    from PIL import Image
    for split, n in (("train", 6), ("test", 4)):
        files, values = read_attributes(a, split)
        again = render(values, gap=0.6, seeds=image_seeds(7, split, 0, n))  # the CSV row + seed reproduce it
        real = np.stack([np.asarray(Image.open(a / f)) for f in files])
        assert np.array_equal(again, real)
        clean = np.stack([np.asarray(Image.open(c / f)) for f in files])
        assert _mad(real, clean) > 0.5


def test_build_cli_has_gap_flag(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = capsys.readouterr().out
    assert "--gap" in out and "DEFAULT_GAP" in out
    assert build_parser().parse_args(["build"]).gap == DEFAULT_GAP
    assert build_parser().parse_args(["build", "--gap", "0.25"]).gap == 0.25


def test_gap_readout_reports_w_and_wplus_per_gap():
    """The readout that defines the gap: optimisation L2 on real images vs generator samples."""
    import torch

    from e4e.models.stylegan2 import Generator
    from experiments.synth_gap import gap_readout

    torch.manual_seed(0)
    g = Generator(64, style_dim=16, n_mlp=1, channels={r: 8 for r in (4, 8, 16, 32, 64)})
    res = gap_readout(g, [0.0, 1.0], n=2, steps=3, batch=2)
    assert set(res["gaps"]) == {"0.0", "1.0"} and res["n"] == 2
    for row in res["gaps"].values():
        assert row["l2_w_real"] > 0 and row["l2_wplus_real"] > 0
        assert row["wplus_real_over_gen"] == pytest.approx(row["l2_wplus_real"] / res["l2_wplus_gen"])
        assert row["w_over_wplus_real"] == pytest.approx(row["l2_w_real"] / row["l2_wplus_real"])
    assert res["gaps"]["1.0"]["l2_wplus_real"] != res["gaps"]["0.0"]["l2_wplus_real"]  # other images
