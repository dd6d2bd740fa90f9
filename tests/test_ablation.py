"""The factorial ablation analysis and the per-seed export, on seeded data whose answer is known by
construction (``y = mu + sum effect/2 * prod(x)`` plus noise that cancels or has a known spread)."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from experiments.ablation import export as E
from experiments.ablation import factorial as F

N = 40


def _x(on: bool) -> float:
    return 1.0 if on else -1.0


def _member(method, switches, seed, values: dict[str, np.ndarray], scalars=None, steps=4800):
    per = pd.DataFrame({"image": np.arange(N), **values})
    meta = {"member": "", "method": method, "seed": seed, "switches": switches, "steps": steps,
            "config_hash": "h", "git_sha": "g", "run_id": "r", "n_images": N, "grid": "ablation_study"}
    return {"per_image": per, "metrics": dict(scalars or {}), "meta": meta}


def planted_study(dreg_by_seed=(1.0, 2.0, 3.0), adv=-0.4, prog=0.0, adv_x_prog=0.5, jitter=0.0):
    """3 seeds x (8 e4e cells + pSp): l2 with the planted effects; the image effect (shared by every
    member) cancels; ``jitter`` * (-1)^image is added to the all-on cell only."""
    rng = np.random.default_rng(0)
    image_effect = rng.normal(0, 5, N)
    study = {}
    for seed, dreg in enumerate(dreg_by_seed):
        members = {}
        for cell in itertools.product((False, True), repeat=3):
            d, a, p = (_x(c) for c in cell)
            y = 10 + dreg / 2 * d + adv / 2 * a + prog / 2 * p + adv_x_prog / 2 * a * p + image_effect
            if all(cell):
                y = y + jitter * (-1.0) ** np.arange(N)
            name = "e4e" + "".join(f"-no_{k}" for k, on in zip(("dreg", "adv", "prog"), cell) if not on)
            members[name] = _member("e4e", dict(zip(F.FACTORS, cell)), seed, {"l2": y},
                                    {"fid_domain": 20 + 3 / 2 * d})
        members["psp"] = _member("psp", dict(zip(F.FACTORS, (False, False, False))), seed,
                                 {"l2": 7 + image_effect}, {"fid_domain": 15.0})
        for n, m in members.items():
            m["meta"]["member"] = n
        study[seed] = members
    return study


def _row(table, effect, metric="l2"):
    return table[(table.effect == effect) & (table.metric == metric)].iloc[0]


def test_factorial_recovers_planted_main_effects_and_interaction_with_seed_se():
    t = F.effects_table(planted_study(), ["l2", "fid_domain"])
    d = _row(t, "d-reg")
    assert d.estimate == pytest.approx(2.0) and d.se == pytest.approx(1 / math.sqrt(3))   # seeds 1, 2, 3
    assert d.se_basis == "seeds" and d.n_seeds == 3 and d.n_images == N and d.steps == 4800
    assert d.t == pytest.approx(2.0 * math.sqrt(3)) and d.same_sign == "3/3"
    assert _row(t, "L_adv").estimate == pytest.approx(-0.4)
    assert _row(t, "L_adv").se == pytest.approx(0, abs=1e-12)
    assert _row(t, "L_adv x progressive").estimate == pytest.approx(0.5)
    for e in ("progressive", "d-reg x L_adv", "d-reg x progressive", "d-reg x L_adv x progressive"):
        assert _row(t, e).estimate == pytest.approx(0, abs=1e-12), e
    assert _row(t, "d-reg", "fid_domain").estimate == pytest.approx(3.0)   # a per-run metric


def test_one_seed_uses_the_per_image_standard_error():
    study = {0: planted_study(jitter=0.8)[0]}
    d = _row(F.effects_table(study, ["l2"]), "d-reg")
    # the jitter enters the contrast as (+1/4) * 0.8 * (-1)^j: sd (ddof 1) = 0.2 sqrt(N / (N - 1))
    assert d.estimate == pytest.approx(1.0) and d.se_basis == "images" and d.n_seeds == 1
    assert d.se == pytest.approx(0.2 / math.sqrt(N - 1))


def test_sequential_view_and_missing_cells():
    study = planted_study()
    seq = F.sequential_table(study, ["l2"]).set_index("effect")
    assert list(seq.index) == ["+ W^k", "+ d-reg", "+ progressive", "+ L_adv", "e4e − pSp (all steps)"]
    assert seq.loc["e4e − pSp (all steps)", "estimate"] == pytest.approx(seq.estimate.iloc[:4].sum())
    pair = F.pair_table(study, "e4e", "psp", ["l2"]).iloc[0]
    assert pair.estimate == pytest.approx(seq.loc["e4e − pSp (all steps)", "estimate"])
    # + d-reg at adv off, prog off: dreg + (interaction terms with a = p = -1 are dreg-free)
    assert seq.loc["+ d-reg", "estimate"] == pytest.approx(2.0)
    del study[1]["e4e-no_dreg"]
    with pytest.raises(LookupError, match="all 8 e4e cells"):
        F.effects_table(study, ["l2"])


def test_levels_table_means_over_seeds():
    lv = F.levels_table(planted_study(), ["fid_domain"]).set_index("member")
    assert lv.loc["psp", "estimate"] == pytest.approx(15.0) and lv.loc["psp", "n_seeds"] == 3


def _write_planted(root):
    study = planted_study()
    for seed, members in study.items():
        for name, m in members.items():
            out = E.seed_dir(root, seed) / name
            out.mkdir(parents=True)
            m["per_image"].to_csv(out / "per_image.csv", index=False)
            (out / "metrics.json").write_text(json.dumps(m["metrics"]))
            (out / "meta.json").write_text(json.dumps(m["meta"]))
    return study


def test_export_round_trips_through_the_files(tmp_path):
    study = _write_planted(tmp_path)
    back = E.load_study(tmp_path)
    assert sorted(back) == [0, 1, 2] and sorted(back[0]) == sorted(study[0])
    cols = ["effect", "metric", "estimate", "se", "n_seeds", "steps", "n_images", "se_basis"]
    pd.testing.assert_frame_equal(F.effects_table(back, ["l2", "fid_domain"])[cols],
                                  F.effects_table(study, ["l2", "fid_domain"])[cols], atol=1e-9)


def test_effects_cli_writes_tables_and_a_vector_figure(tmp_path):
    from experiments.ablation.cli import main

    root = tmp_path / "data"
    _write_planted(root)
    assert main(["effects", "--root", str(root), "--out", str(tmp_path / "r")]) == 0
    table = pd.read_csv(tmp_path / "r/tables/ablation_effects.csv")
    assert list(table.columns[:8]) == ["effect", "metric", "estimate", "se", "t", "n_seeds", "steps", "n_images"]
    assert set(table.metric) == {"l2", "fid_domain"}
    assert (tmp_path / "r/figures/ablation_effects.pdf").read_bytes()[:4] == b"%PDF"
    assert main(["effects", "--root", str(tmp_path / "none")]) == 2


# ------------------------------------------------------------------------------------------------
# the real grid file, on a tiny generator: killed part-way, resumed, exported, analysed
# ------------------------------------------------------------------------------------------------
def _tiny_study_grid(root, assets) -> "Path":
    import yaml
    from test_grid import REPO, TINY_OVERRIDES

    spec = yaml.safe_load((REPO / "experiments/grids/ablation_study.yaml").read_text())
    spec.pop("prepare")
    spec["config"] = str(REPO / spec["config"])
    spec["method_config"] = str(REPO / spec["method_config"])
    spec["evaluate"] = {"metrics": ["l2", "msssim", "latent_offsets"], "n_images": 8, "batch_size": 4,
                        "data": assets["test"], "qualitative": {"n_images": 1, "edits": []}}
    spec["profiles"]["demo"]["overrides"] = {**TINY_OVERRIDES, "max_steps": 8, "model.generator": assets["generator"],
                                             "data.train_dir": assets["train"]}
    path = root / "ablation_study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_study_seed_killed_part_way_resumes_exports_and_analyses(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_grid import REPO, _tiny_assets, child_runs

    assets = _tiny_assets(tmp_path)
    path = _tiny_study_grid(tmp_path, assets)
    uri, runs_dir = f"sqlite:///{tmp_path / 'mlruns' / 'seed3.db'}", tmp_path / "runs"
    cmd = [sys.executable, "-m", "experiments.grid", "run", str(path), "--set", "seed=3", "--tracking-uri", uri,
           "--runs-dir", str(runs_dir), "--no-progress", "--jobs", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:   # kill the seed once its second member has a checkpoint
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(list(runs_dir.glob("synth/ablation_study/*/last.pt"))) < 2:
            assert proc.poll() is None, "the seed finished before it could be killed"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode != 0
    rc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert rc.returncode == 0, rc.stderr[-2000:]
    runs = [r for r in child_runs(uri, "ablation_study") if r.info.status == "FINISHED"]
    names = [r.data.tags["member"] for r in runs]
    assert len(names) == 10 and len(set(names)) == 10, names          # no member trained twice

    root = tmp_path / "data"
    assert sorted(E.export_seed(uri, 3, root, gradients=True, workdir=REPO)) == sorted(names)
    first = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    E.export_seed(uri, 3, root, gradients=True, workdir=REPO)          # exporting again changes nothing
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == first
    with pytest.raises(ValueError, match="seed"):
        E.export_seed(uri, 4, root)
    study = E.load_study(root)
    meta = study[3]["e4e-no_dreg-no_prog"]["meta"]
    assert meta["switches"] == {"delta_reg": False, "adversarial": True, "progressive": False}
    assert meta["steps"] == 8 and meta["seed"] == 3 and meta["n_images"] == 8 and meta["git_sha"]
    grads = study[3]["e4e"]["gradients"]
    assert set(grads) >= {"grad_share_l2", "grad_share_delta_reg", "grad_share_adv", "d_acc_real"}
    assert sum(v for k, v in grads.items() if k.startswith("grad_share_")) == pytest.approx(1.0)
    assert "grad_share_delta_reg" not in study[3]["e4e-no_dreg"]["gradients"]
    assert (study[3]["e4e"]["training"].step % E.TRAIN_BIN == 0).all()
    table = F.effects_table(study, ["l2", "msssim", "latent_offset"])
    assert len(table) == 7 * 3 and (table.n_seeds == 1).all() and (table.se_basis == "images").all()
    assert np.isfinite(table.estimate).all()


def test_mechanism_loss_shares_from_training_curves():
    from experiments.ablation.mechanism import mechanism_table

    study = planted_study()
    for members in study.values():
        for m in members.values():
            m["meta"]["loss_weights"] = {"loss_l2": 1.0, "loss_delta_reg": 2e-4, "loss_adv": 0.1}
            m["training"] = pd.DataFrame({"step": [100, 4700, 4800], "train/loss_l2": [9.0, 0.02, 0.02],
                                          "train/loss_delta_reg": [0.0, 100.0, 100.0],
                                          "train/loss_adv": [5.0, 0.6, 0.6], "train/d_acc_fake": [0.5, 0.9, 0.8]})
            m["metrics"]["latent_offset_row1"] = 0.25
    t = mechanism_table(study).set_index("member")
    # last 10 %: l2 0.02, d-reg 2e-4 x 100 = 0.02, adv 0.1 x 0.6 = 0.06 -> shares 0.2 / 0.2 / 0.6
    assert t.loc["e4e", "share_l2"] == pytest.approx(0.2) and t.loc["e4e", "share_adv"] == pytest.approx(0.6)
    assert t.loc["e4e", "d_acc_fake"] == pytest.approx(0.85) and t.loc["e4e", "offset_row1"] == 0.25
    assert t.loc["e4e", "n_seeds"] == 3


def test_notebook_runs_on_the_exported_files_alone(tmp_path, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    from test_grid import REPO

    _write_planted(tmp_path / "data")
    nb = jupytext.read(REPO / "notebooks" / "08_ablation_study.py")
    monkeypatch.setenv("E4E_ABLATION_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("E4E_REPORTS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(nb, timeout=300, resources={"metadata": {"path": str(REPO)}}).execute()
    assert (tmp_path / "out/tables/ablation_effects.csv").is_file()
    assert (tmp_path / "out/figures/ablation_effects.pdf").is_file()


def test_edit_size_is_zero_without_an_edit_and_grows_with_strength():
    from experiments.ablation.cli import edit_sizes

    t = edit_sizes(["age"], [0.0, 6.0, 12.0], n=4).set_index("strength").edit_mse
    assert t[0.0] == 0 and 0 < t[6.0] < t[12.0]
