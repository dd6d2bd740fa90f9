"""Grids: grid files, member names, planning, and end-to-end runs of a tiny grid into a temporary
MLflow store (skip finished, resume a killed member into the same run, a failing member, N
processes, the submitit local executor, the notebooks on the result)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments import grid as G

REPO = Path(__file__).resolve().parent.parent
GRIDS = REPO / "experiments" / "grids"
DOMAINS = ("synth", "ffhq", "cars", "horse", "church")


# ------------------------------------------------------------------------------------------------
# grid files (no training)
# ------------------------------------------------------------------------------------------------
def test_member_names_from_non_default_switches():
    sw = {"delta_reg": {"key": "a", "label": "dreg", "default": True},
          "adversarial": {"key": "b", "label": "adv", "default": True},
          "progressive": {"key": "c", "label": "prog", "default": True}}
    assert G.member_name("e4e", {}, sw) == "e4e"
    assert G.member_name("e4e", {"delta_reg": True}, sw) == "e4e"
    assert G.member_name("e4e", {"delta_reg": False}, sw) == "e4e-no_dreg"
    assert G.member_name("e4e", {"progressive": False, "adversarial": False}, sw) == "e4e-no_adv-no_prog"
    off = {"delta_reg": False, "adversarial": False, "progressive": False}
    assert G.member_name("psp", off, sw, defaults=off) == "psp"
    assert G.member_name("psp", {**off, "adversarial": True}, sw, defaults=off) == "psp-adv"


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_paper_ablation_resolves_for_every_domain(domain, profile):
    if profile == "demo" and domain != "synth":
        with pytest.raises(G.GridError, match="no profile 'demo'"):   # demo = the CPU schedules of synth
            G.load_grid(GRIDS / "paper_ablation.yaml", domain, profile)
        return
    grid = G.load_grid(GRIDS / "paper_ablation.yaml", domain, profile)
    names = [m.name for m in grid.members]
    e4e = {"e4e", "e4e-no_dreg", "e4e-no_adv", "e4e-no_prog", "e4e-no_dreg-no_adv", "e4e-no_dreg-no_prog",
           "e4e-no_adv-no_prog", "e4e-no_dreg-no_adv-no_prog"}
    # the synth demo adds e4e-short: the full method on the ablations' schedule
    extra = {"e4e-short"} if profile == "demo" else set()
    assert e4e <= set(names) and len(names) == len(set(names)) == 15 + len(extra) and extra <= set(names)
    assert {"psp", "w_encoder", "restyle_e4e", "restyle_psp", "optim_w", "optim_wplus",
            "optim_from_encoder"} <= set(names)
    assert grid.member("optim_from_encoder").depends_on == ["e4e"]
    # the 8 e4e members differ exactly in the three switches
    switches = {tuple(grid.member(n).overrides.get(f"{s}.enabled", True) for s in ("delta_reg", "adversarial", "progressive"))
                for n in e4e}
    assert len(switches) == 8
    psp = G.resolve_config(grid, grid.member("psp"))          # method config: no e4e regularisers
    assert not (psp.adversarial.enabled or psp.delta_reg.enabled or psp.progressive.enabled)
    cfg = G.resolve_config(grid, grid.member("e4e-no_dreg-no_prog"))
    assert (cfg.delta_reg.enabled, cfg.adversarial.enabled, cfg.progressive.enabled) == (False, True, False)
    assert cfg.data.domain == domain
    assert grid.config and Path(grid.config).exists()
    assert grid.evaluate["metrics"] and grid.evaluate["n_images"] > 0
    if extra:
        short, full = (G.resolve_config(grid, grid.member(n)) for n in ("e4e-short", "e4e"))
        ablation = G.resolve_config(grid, grid.member("e4e-no_dreg"))
        assert short.max_steps == ablation.max_steps < full.max_steps
        assert (short.delta_reg.enabled, short.adversarial.enabled, short.progressive.enabled) == (True, True, True)


def test_domain_variants_hold_only_deltas():
    base = yaml.safe_load((GRIDS / "paper_ablation.yaml").read_text())
    for d in DOMAINS:
        var = yaml.safe_load((GRIDS / f"paper_ablation_{d}.yaml").read_text())
        assert var["extends"] == "paper_ablation.yaml" and var["domain"] == d
        assert "members" not in var and "switches" not in var, f"{d}: members come from the base grid"
    assert "domain" not in base


def test_grid_errors_are_clear(tmp_path):
    with pytest.raises(G.GridError, match="no variant of paper_ablation.yaml for domain 'mars'.*known: .*synth"):
        G.load_grid(GRIDS / "paper_ablation.yaml", "mars")
    with pytest.raises(G.GridError, match="no profile 'huge'"):
        G.load_grid(GRIDS / "paper_ablation.yaml", "synth", "huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: bad\ndomain: synth\nmembrs: []\n")
    with pytest.raises(G.GridError, match=r"unknown key\(s\) \['membrs'\]"):
        G.load_grid(bad)
    dep = tmp_path / "dep.yaml"
    dep.write_text("grid: dep\ndomain: synth\nprofiles: {demo: {}}\nmembers:\n  - {method: optim_from_encoder, depends_on: e4e}\n")
    with pytest.raises(G.GridError, match="depends on \\['e4e'\\], not in the grid"):
        G.load_grid(dep)
    with pytest.raises(G.GridError, match="unknown \\['nope'\\]"):
        G.load_grid(GRIDS / "paper_ablation.yaml", "synth", "demo", only=["nope"])


def test_eval_overrides_reach_the_evaluation_spec():
    grid = G.load_grid(GRIDS / "paper_ablation.yaml", "synth", "demo",
                       eval_overrides=G.parse_dotlist(["n_images=200", "options.edit_n_ref=128", "metrics=[l2, msssim]"]))
    assert grid.evaluate["n_images"] == 200 and grid.evaluate["metrics"] == ["l2", "msssim"]
    assert grid.evaluate["options"]["edit_n_ref"] == 128
    assert grid.evaluate["qualitative"]["n_images"] == 4            # untouched keys stay
    with pytest.raises(G.GridError, match=r"unknown key\(s\) \['n_imgs'\]"):
        G.load_grid(GRIDS / "paper_ablation.yaml", "synth", "demo", eval_overrides={"n_imgs": 5})


def test_members_subset_keeps_dependencies():
    grid = G.load_grid(GRIDS / "paper_ablation.yaml", "synth", "demo", only=["optim_from_encoder"])
    assert [m.name for m in grid.members] == ["e4e", "optim_from_encoder"]


def test_cli_help_and_dry_run(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = subprocess.run([sys.executable, "-m", "experiments.grid", "run", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env=env)
    assert out.returncode == 0 and "--launcher" in out.stdout and "(default:" in out.stdout
    out = subprocess.run([sys.executable, "-m", "experiments.grid", "run", str(GRIDS / "paper_ablation.yaml"),
                          "--domain", "synth", "--profile", "demo", "--dry-run"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "e4e-no_dreg-no_adv-no_prog" in out.stdout and "16/16 to run" in out.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()  # a dry run starts nothing


# ------------------------------------------------------------------------------------------------
# a tiny grid, end to end, into a temporary MLflow store
# ------------------------------------------------------------------------------------------------
def _tiny_assets(root: Path) -> dict[str, str]:
    """A tiny generator (rosinality format) and train/test folders of its samples."""
    import numpy as np
    import torch
    from PIL import Image

    from e4e.checkpoints import save_generator
    from e4e.models.stylegan2 import Generator

    torch.manual_seed(0)
    # the synth domain's geometry (64 px, 10 W+ rows: the trainer refuses another), tiny widths
    g = Generator(64, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 8, 64: 4}).eval()
    gen_path = root / "tiny_generator.pt"
    save_generator(g, gen_path, latent_avg=g.mean_latent(1000, seed=0)[0])
    with torch.no_grad():
        x = g.sample(torch.randn(28, 32, generator=torch.Generator().manual_seed(1)), noise_mode="const")
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for split, sl in (("train", slice(0, 20)), ("test", slice(20, 28))):
        d = root / "data" / split
        d.mkdir(parents=True)
        for i, a in enumerate(arr[sl]):
            Image.fromarray(np.ascontiguousarray(a)).save(d / f"{i:04d}.png")
    return {"generator": str(gen_path), "train": str(root / "data" / "train"), "test": str(root / "data" / "test")}


TINY_OVERRIDES = {
    "max_steps": 6, "batch_size": 4, "log_every": 1, "val_every": 3, "ckpt_every": 2, "image_every": 1000,
    "progress": False, "loss.lpips_lambda": 0, "loss.id_lambda": 0, "model.encoder.small": True,
    "model.restyle_iters": 2, "data.image_size": 32, "data.hflip": False, "data.val_fraction": 0.2,
    "adversarial.r1_every": 2, "projection.steps": 4, "projection.w_avg_samples": 256,
    "projection.perceptual": "l2", "data.val_dir": "", "image_edits": [],
}


def write_grid(root: Path, assets: dict, members: list, name: str = "tiny", **overrides) -> Path:
    grid = {
        "grid": name, "domain": "synth",
        "config": str(REPO / "experiments" / "configs" / "synth.yaml"),
        "method_config": str(REPO / "experiments" / "configs" / "{method}.yaml"),
        "switches": {"delta_reg": {"key": "delta_reg.enabled", "label": "dreg", "default": True}},
        "members": members,
        "evaluate": {"metrics": ["l2", "msssim", "swd", "latent_dist_w"], "n_images": 8, "batch_size": 4,
                     "data": assets["test"], "qualitative": {"n_images": 2, "edits": []}},
        "profiles": {"demo": {"overrides": {**TINY_OVERRIDES, "model.generator": assets["generator"],
                                            "data.train_dir": assets["train"], **overrides}}},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def child_runs(uri: str, grid: str, experiment: str = "synth"):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], f"tags.grid = '{grid}' and tags.member != ''")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny generator, its train/test images and one MLflow store shared by this module's grids."""
    root = tmp_path_factory.mktemp("grid")
    return {"root": root, "uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", **_tiny_assets(root)}


@pytest.fixture(scope="module")
def tiny(assets):
    """One real grid run: e4e, w_encoder and optim_from_encoder (depends on e4e)."""
    root = assets["root"]
    path = write_grid(root, assets, [{"method": "e4e"}, {"method": "w_encoder"},
                                     {"method": "optim_from_encoder", "depends_on": "e4e"}])
    runs_dir = root / "runs"
    t0 = time.perf_counter()
    results = G.run_grid(G.load_grid(path), assets["uri"], runs_dir, progress=False)
    return {**assets, "assets": assets, "path": path, "runs_dir": runs_dir, "results": results,
            "seconds": time.perf_counter() - t0}


def test_tiny_grid_runs_end_to_end(tiny):
    from mlflow.tracking import MlflowClient

    results = tiny["results"]
    assert [r.status for r in results] == ["FINISHED"] * 3, [(r.member, r.error) for r in results]
    c = MlflowClient(tiny["uri"])
    runs = {r.data.tags["member"]: r for r in child_runs(tiny["uri"], "tiny")}
    assert set(runs) == {"e4e", "w_encoder", "optim_from_encoder"}
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs.values()}
    assert len(parents) == 1
    parent = c.get_run(parents.pop())
    assert parent.data.tags["grid"] == "tiny" and parent.info.status == "FINISHED"
    for name, run in runs.items():
        tags = run.data.tags
        assert run.info.status == "FINISHED" and run.info.run_name == name
        assert tags["grid.stage"] == "done" and tags["method"] == name.split("-")[0]
        assert len(tags["config_hash"]) >= 16 and tags["git_sha"]
        assert "test/l2" in run.data.metrics and "test/msssim" in run.data.metrics
        arts = {a.path for a in c.list_artifacts(run.info.run_id, "eval")}
        assert {"eval/per_image.csv", "eval/qualitative.npz", "eval/metrics.json"} <= arts
    # encoders have training curves and params; the optimisation member was started from e4e's checkpoint
    assert any(len(c.get_metric_history(runs["e4e"].info.run_id, k)) > 1 for k in runs["e4e"].data.metrics)
    assert runs["e4e"].data.params["model.method"] == "e4e"
    assert runs["optim_from_encoder"].data.tags["checkpoint"] == runs["e4e"].data.tags["checkpoint"]
    table = G.results_table(c, results)
    assert "L2" in table and "optim_from_encoder" in table


def test_rerun_skips_finished_members(tiny, capsys):
    before = {r.info.run_id for r in child_runs(tiny["uri"], "tiny")}
    results = G.run_grid(G.load_grid(tiny["path"]), tiny["uri"], tiny["runs_dir"], progress=False)
    assert [r.status for r in results] == ["SKIPPED"] * 3
    assert {r.info.run_id for r in child_runs(tiny["uri"], "tiny")} == before
    status = G.grid_status(G.load_grid(tiny["path"]), tiny["uri"], tiny["runs_dir"])
    assert status.count("skip (finished)") == 3 and "FINISHED" in status


def test_failing_members_are_failed_and_the_grid_goes_on(assets, tmp_path):
    from mlflow.tracking import MlflowClient

    # (a member whose config does not resolve refuses the whole grid before anything runs:
    # tests/test_bad_input_grid.py)
    members = [{"method": "e4e", "name": "missing_generator", "overrides": {"model.generator": str(tmp_path / "no.pt")}},
               {"method": "e4e", "name": "nan", "overrides": {"optim.lr": 1e30, "optim.name": "adam"}},
               {"method": "w_encoder"},
               {"method": "optim_from_encoder", "name": "orphan", "depends_on": "missing_generator"}]
    path = write_grid(tmp_path, assets, members, name="failing")
    results = {r.member: r for r in G.run_grid(G.load_grid(path), assets["uri"], tmp_path / "runs", progress=False)}
    assert results["w_encoder"].status == "FINISHED"
    c = MlflowClient(assets["uri"])
    for name, needle in [("missing_generator", "no.pt"), ("nan", "non-finite"),
                         ("orphan", "missing_generator")]:
        r = results[name]
        assert r.status == "FAILED" and needle in r.error, (name, r.error)
        run = c.get_run(r.run_id)
        assert run.info.status == "FAILED" and needle in run.data.tags["error"]
    # a re-run retries only what failed, each in its same run
    again = {r.member: r for r in G.run_grid(G.load_grid(path), assets["uri"], tmp_path / "runs", progress=False)}
    assert again["w_encoder"].status == "SKIPPED"
    assert again["missing_generator"].status == "FAILED"
    assert again["missing_generator"].run_id == results["missing_generator"].run_id
    assert len(child_runs(assets["uri"], "failing")) == len(members)


def test_killed_member_resumes_into_the_same_run(assets, tmp_path):
    from mlflow.tracking import MlflowClient

    path = write_grid(tmp_path, assets, [{"method": "e4e"}], name="killed", max_steps=40, ckpt_every=2,
                      val_every=1000)
    runs_dir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "experiments.grid", "run", str(path), "--tracking-uri", assets["uri"],
           "--runs-dir", str(runs_dir), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not list(runs_dir.glob("synth/killed/*/last.pt")):
            assert proc.poll() is None, "the grid finished before it could be killed"
            time.sleep(0.2)
        assert list(runs_dir.glob("synth/killed/*/last.pt")), "no checkpoint within 600 s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode != 0, "the member finished before the kill; make it longer"
    (run,) = child_runs(assets["uri"], "killed")
    assert run.info.status == "RUNNING" and run.data.tags["grid.stage"] == "train"
    (task,) = G.plan(G.load_grid(path), assets["uri"], runs_dir)
    assert task.action == "resume" and task.run_id == run.info.run_id

    (res,) = G.run_grid(G.load_grid(path), assets["uri"], runs_dir, progress=False)
    assert res.status == "FINISHED" and res.run_id == run.info.run_id, res.error
    (after,) = child_runs(assets["uri"], "killed")
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    c = MlflowClient(assets["uri"])
    curve = next(k for k in after.data.metrics if not k.startswith("test/") and
                 len(c.get_metric_history(run.info.run_id, k)) > 5)
    steps = [m.step for m in c.get_metric_history(run.info.run_id, curve)]
    assert len(steps) == len(set(steps)), "a resumed run logs each step once"
    assert max(steps) >= 39


def test_member_whose_checkpoints_were_lost_trains_again_in_a_new_run(assets, tmp_path):
    """A runs dir wiped under an unfinished member: its run's logged history cannot be continued from
    step 0 (each step would be logged twice), so the old run is failed with the reason and a new one trains."""
    import shutil

    from mlflow.tracking import MlflowClient

    path = write_grid(tmp_path, assets, [{"method": "w_encoder"}], name="wiped")
    runs_dir = tmp_path / "runs"
    (first,) = G.run_grid(G.load_grid(path), assets["uri"], runs_dir, progress=False)
    assert first.status == "FINISHED", first.error
    c = MlflowClient(assets["uri"])
    c.update_run(first.run_id, status="RUNNING")          # as if killed in training ...
    c.set_tag(first.run_id, "grid.stage", "train")
    shutil.rmtree(runs_dir)                               # ... and the runs dir lost with the session
    (task,) = G.plan(G.load_grid(path), assets["uri"], runs_dir)
    assert task.action == "resume"
    (res,) = G.run_grid(G.load_grid(path), assets["uri"], runs_dir, progress=False)
    assert res.status == "FINISHED" and res.run_id != first.run_id, res.error
    old = c.get_run(first.run_id)
    assert old.info.status == "FAILED" and "checkpoints lost" in old.data.tags["error"]
    assert old.data.tags["error.type"] == "CheckpointsLost"
    steps = [m.step for m in c.get_metric_history(res.run_id, "train/loss")]
    assert steps and len(steps) == len(set(steps))
    (again,) = G.run_grid(G.load_grid(path), assets["uri"], runs_dir, progress=False)
    assert again.status == "SKIPPED" and again.run_id == res.run_id


def test_jobs_run_members_in_processes(assets, tmp_path):
    path = write_grid(tmp_path, assets, [{"method": "e4e"}, {"method": "w_encoder"}], name="jobs")
    results = G.run_grid(G.load_grid(path), assets["uri"], tmp_path / "runs", jobs=2, progress=False)
    assert [r.status for r in results] == ["FINISHED", "FINISHED"], [r.error for r in results]


def test_submitit_launcher_with_the_local_executor(assets, tmp_path):
    path = write_grid(tmp_path, assets, [{"method": "w_encoder"}], name="submitit")
    results = G.run_grid(G.load_grid(path), assets["uri"], tmp_path / "runs", launcher="submitit", cluster="local",
                         submitit_params={"timeout_min": 10}, progress=False)
    assert [r.status for r in results] == ["FINISHED"], [r.error for r in results]
    assert list((tmp_path / "runs").glob("synth/submitit/submitit/*_log.out")) or \
        list((tmp_path / "runs").rglob("*_log.out")), "submitit wrote no job logs"


@pytest.mark.slow
def test_notebooks_run_on_the_grid_store(tiny, tmp_path):
    from experiments import report

    out = tmp_path / "reports"
    assert report.main(["--tracking-uri", tiny["uri"], "--experiment", "synth", "--grid", "tiny",
                        "--out", str(out), "--no-save-executed"]) == 0
    assert {"ablation.csv", "ablation.md"} <= {p.name for p in (out / "tables").iterdir()}
    assert {"tradeoff_distortion_perception.png", "qualitative_0.png", "training_curves.png",
            "per_image_distributions.png"} <= {p.name for p in (out / "figures").iterdir()}
    # the figures and tables are attached to the grid's parent run
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tiny["uri"])
    exp = c.get_experiment_by_name("synth")
    parent_id = c.search_runs([exp.experiment_id], "tags.grid = 'tiny' and tags.`grid.parent` = 'true'",
                              order_by=["attributes.start_time DESC"], max_results=1)[0].info.run_id  # the last grid call
    figs = {a.path for a in c.list_artifacts(parent_id, "figures")}
    assert {"figures/tradeoff_distortion_perception.png", "figures/qualitative_0.png"} <= figs


def test_demo_spends_its_steps_on_e4e_psp_and_the_w_encoder():
    grid = G.load_grid(GRIDS / "paper_ablation.yaml", "synth", "demo")
    steps = {m.name: G.resolve_config(grid, m).max_steps for m in grid.members if not m.method.startswith("optim")}
    main = {"e4e", "psp", "w_encoder"}
    assert [m.name for m in grid.members][:3] == ["e4e", "psp", "w_encoder"]  # the longest start first
    assert min(steps[n] for n in main) > 3 * max(v for k, v in steps.items() if k not in main)


def test_realism_gap_grid_evaluates_each_member_on_its_own_gap(tmp_path):
    grid = G.load_grid(GRIDS / "realism_gap.yaml")
    assert {m.method for m in grid.members} == {"w_encoder", "e4e", "psp"} and len(grid.members) == 9
    tasks = {t.member.name: t for t in G.plan(grid, f"sqlite:///{tmp_path / 'none.db'}")}
    for name, t in tasks.items():
        gap_dir = "data/synth_" + name.split("-")[-1]
        cfg = G.resolve_config(grid, t.member)
        assert cfg.data.train_dir == f"{gap_dir}/train" and t.evaluate["data"] == f"{gap_dir}/test"
        assert t.evaluate["metrics"] == grid.evaluate["metrics"]      # the rest of the spec is shared
    creates = {p["creates"] for p in grid.prepare}
    assert {t.evaluate["data"] for t in tasks.values()} == creates
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: bad\ndomain: synth\nprofiles: {demo: {}}\nmembers:\n  - {method: e4e, evaluate: {dta: x}}\n")
    with pytest.raises(G.GridError, match=r"member e4e evaluate"):
        G.load_grid(bad)


def test_ui_parent_note_summary_metrics_and_tags(tiny):
    """What the MLflow UI shows: the parent's note holds the results table, every member carries
    summary/* metrics, switch tags (n/a where nothing is trained) and a description; tag search works."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tiny["uri"])
    runs = {r.data.tags["member"]: r for r in child_runs(tiny["uri"], "tiny")}
    parent = c.get_run(runs["e4e"].data.tags["mlflow.parentRunId"])
    note = parent.data.tags["mlflow.note.content"]
    assert "| member" in note and "L2 ↓" in note and all(f"| {m} " in note for m in runs)
    e4e_l2 = runs["e4e"].data.metrics["summary/l2"]
    assert e4e_l2 == pytest.approx(runs["e4e"].data.metrics["test/l2"]) and f"{e4e_l2:.4g}" in note
    for name, run in runs.items():
        assert {"summary/l2", "summary/msssim", "summary/swd", "summary/dist_w"} <= set(run.data.metrics), name
        assert run.data.tags["mlflow.note.content"].endswith(".")
    tags = {m: (r.data.tags["delta_reg"], r.data.tags["adversarial"], r.data.tags["progressive"]) for m, r in runs.items()}
    assert tags == {"e4e": ("on", "on", "on"), "w_encoder": ("off", "off", "off"),
                    "optim_from_encoder": ("n/a", "n/a", "n/a")}
    assert not any(k.startswith(("delta_reg.", "adversarial.", "progressive."))
                   for k in runs["optim_from_encoder"].data.params)
    exp = c.get_experiment_by_name("synth")
    found = c.search_runs([exp.experiment_id], "tags.grid = 'tiny' and tags.delta_reg = 'off'")
    assert {r.data.tags["member"] for r in found} == {"w_encoder"}


def test_reevaluation_on_another_size_is_kept_apart(tiny):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tiny["uri"])
    before = {r.data.tags["member"]: r for r in child_runs(tiny["uri"], "tiny")}["w_encoder"]
    grid = G.load_grid(tiny["path"], only=["w_encoder"], eval_overrides={"n_images": 4})
    (res,) = G.run_grid(grid, tiny["uri"], tiny["runs_dir"], reevaluate=True, progress=False)
    assert res.status == "FINISHED"
    after = c.get_run(before.info.run_id)
    assert after.data.metrics["test/l2"] == before.data.metrics["test/l2"]       # the 8-image values stay
    assert "test_n4/l2" in after.data.metrics and after.data.tags["eval.n_images"] == "8"
    assert {a.path for a in c.list_artifacts(after.info.run_id, "eval_n4")} >= {"eval_n4/per_image.csv"}


def test_reevaluating_some_metrics_keeps_the_other_values_and_per_image_lists(tiny, tmp_path):
    """`--reevaluate --eval metrics=[l2]` replaces l2 and loses nothing else the run's eval/ holds."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tiny["uri"])
    run_id = {r.data.tags["member"]: r for r in child_runs(tiny["uri"], "tiny")}["e4e"].info.run_id

    def logged(tag):
        d = tmp_path / tag
        d.mkdir()
        values = json.loads(open(c.download_artifacts(run_id, "eval/metrics.json", str(d))).read())["values"]
        return values, pd.read_csv(c.download_artifacts(run_id, "eval/per_image.csv", str(d)))

    before, frame = logged("before")
    assert len(before) > 2 and "l2" in frame.columns and len(frame.columns) > 2
    grid = G.load_grid(tiny["path"], only=["e4e"], eval_overrides={"metrics": ["l2"]})
    (res,) = G.run_grid(grid, tiny["uri"], tiny["runs_dir"], reevaluate=True, progress=False)
    assert res.status == "FINISHED"
    after, frame_after = logged("after")
    assert after == before                                          # same seeds: the same values, all kept
    pd.testing.assert_frame_equal(frame_after[frame.columns], frame)


def test_member_runs_carry_source_tags_steps_seed_data_sets_and_checkpoint_artifacts(tiny):
    """Standard MLflow tags (a grid's runs are JOBs), ``steps`` / ``seed`` on every member, the
    training and evaluation folders as dataset inputs, the encoders' checkpoints as artifacts."""
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    c = MlflowClient(tiny["uri"])
    runs = {r.data.tags["member"]: r for r in child_runs(tiny["uri"], "tiny")}
    parent = c.get_run(runs["e4e"].data.tags["mlflow.parentRunId"])
    for run in [parent, *runs.values()]:
        tags = run.data.tags
        assert tags[MLFLOW_SOURCE_TYPE] == "JOB" and tags[MLFLOW_SOURCE_NAME] and tags[MLFLOW_USER]
        assert tags["git_sha"].startswith(tags[MLFLOW_GIT_COMMIT])
    assert {m: (r.data.tags["steps"], r.data.tags["seed"]) for m, r in runs.items()} == \
        {"e4e": ("6", "0"), "w_encoder": ("6", "0"), "optim_from_encoder": ("n/a", "0")}
    for name, run in runs.items():
        inputs = {[t.value for t in i.tags if t.key == "mlflow.data.context"][0]: i.dataset
                  for i in c.get_run(run.info.run_id).inputs.dataset_inputs}
        assert inputs["evaluation"].name == "data/test", name
        assert json.loads(inputs["evaluation"].source)["uri"] == str(Path(tiny["test"]).resolve())
        assert ("training" in inputs) is (name != "optim_from_encoder"), name
        if name != "optim_from_encoder":
            assert inputs["training"].name == "data/train" and len(inputs["training"].digest) == 16
        assert "steps" in run.data.tags["mlflow.note.content"] or name == "optim_from_encoder"
    for name in ("e4e", "w_encoder"):
        tags = runs[name].data.tags
        assert tags["checkpoint.uri"] == f"runs:/{runs[name].info.run_id}/{Path(tags['checkpoint']).name}"
        assert Path(tags["checkpoint"]).name in {a.path for a in c.list_artifacts(runs[name].info.run_id)}
    exp = c.get_experiment_by_name("synth")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_dependency_trained_on_another_host_comes_from_its_artifact(tiny, capsys):
    """e4e's folder gone (as on another host): the member that starts from its codes
    (optim_from_encoder, re-run after a failure) gets e4e's checkpoint artifact from the store."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tiny["uri"])
    runs = {r.data.tags["member"]: r for r in child_runs(tiny["uri"], "tiny")}
    e4e_dir = Path(runs["e4e"].data.tags["out_dir"])
    away = e4e_dir.with_name(e4e_dir.name + "-away")
    c.set_terminated(runs["optim_from_encoder"].info.run_id, "FAILED")
    e4e_dir.rename(away)
    try:
        results = G.run_grid(G.load_grid(tiny["path"]), tiny["uri"], tiny["runs_dir"], progress=False)
    finally:
        away.rename(e4e_dir)
    status = {r.member: r.status for r in results}
    assert status == {"e4e": "SKIPPED", "w_encoder": "SKIPPED", "optim_from_encoder": "FINISHED"}, results
    uri = runs["e4e"].data.tags["checkpoint.uri"]
    assert next(r for r in results if r.member == "e4e").checkpoint == uri
    optim = c.get_run(runs["optim_from_encoder"].info.run_id)
    assert optim.data.tags["checkpoint"] == uri and optim.info.status == "FINISHED"
    # the same encoder's codes: the same result (to float32 summation order, which varies between calls)
    assert optim.data.metrics["test/l2"] == pytest.approx(runs["optim_from_encoder"].data.metrics["test/l2"], rel=1e-5)
    assert "workflowType=machine_learning" in capsys.readouterr().out


def test_report_refuses_to_mix_sample_sizes(tmp_path):
    from mlflow.tracking import MlflowClient

    from experiments import report

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("synth")
    for member, n in (("e4e", "32"), ("psp", "8")):
        run = c.create_run(exp, tags={"member": member, "grid": "g", "grid.stage": "done", "eval.n_images": n})
        c.log_metric(run.info.run_id, "test/l2", 0.1)
        c.set_terminated(run.info.run_id)
    with pytest.raises(ValueError, match="different numbers of test images"):
        report.member_runs("synth", "g", uri=uri)


def test_member_locked_by_a_live_process_is_never_resumed(assets, tmp_path):
    """A second grid on one store: the member another live process holds is BUSY, not resumed."""
    import json
    import os
    import socket
    import subprocess as sp

    path = write_grid(tmp_path, assets, [{"method": "w_encoder"}], name="locked")
    grid = G.load_grid(path)
    runs_dir = tmp_path / "runs"
    (task,) = G.plan(grid, assets["uri"], runs_dir)
    holder = sp.Popen(["sleep", "60"])
    try:
        Path(task.out_dir).mkdir(parents=True)
        (Path(task.out_dir) / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                              "started": "now"}))
        assert G.plan(grid, assets["uri"], runs_dir)[0].action == "busy"
        (res,) = G.run_grid(grid, assets["uri"], runs_dir, progress=False)
        assert res.status == "BUSY" and str(holder.pid) in res.error
        assert not (Path(task.out_dir) / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died (kill -9): its lock is stale, the next call takes the member over and finishes it
    (res,) = G.run_grid(grid, assets["uri"], runs_dir, progress=False)
    assert res.status == "FINISHED" and not (Path(task.out_dir) / ".lock").exists()
    assert os.getpid() != holder.pid


_EVAL_KILL_SCRIPT = r'''
import os, signal, sys
import torch
from experiments import evaluate as E, grid as G

torch.set_num_threads(1)   # as the test (one_thread): the re-evaluation repeats its sums exactly

orig = E.log_results
def log_results(*a, **k):   # the member's test/* values are in MLflow, its summary and stage not yet
    orig(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
E.log_results = log_results
G.run_grid(G.load_grid(sys.argv[1]), sys.argv[2], sys.argv[3], progress=False)
'''


def test_grid_killed_during_evaluation_resumes_and_logs_each_value_once(assets, tmp_path, one_thread):
    """kill -9 part-way through a member's evaluation: the re-run resumes the same run (no new
    training step), evaluates again and leaves every test/* metric with exactly one entry."""
    from mlflow.tracking import MlflowClient

    path = write_grid(tmp_path, assets, [{"method": "w_encoder"}], name="evalkill", max_steps=4)
    runs_dir = tmp_path / "runs"
    script = tmp_path / "kill.py"
    script.write_text(_EVAL_KILL_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(path), assets["uri"], str(runs_dir)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, r.stderr[-3000:]
    (run,) = child_runs(assets["uri"], "evalkill")
    assert run.info.status == "RUNNING" and run.data.tags["grid.stage"] == "evaluate"
    tested = sorted(k for k in run.data.metrics if k.startswith("test/"))
    assert tested
    (task,) = G.plan(G.load_grid(path), assets["uri"], runs_dir)
    assert task.action == "resume" and task.run_id == run.info.run_id
    (res,) = G.run_grid(G.load_grid(path), assets["uri"], runs_dir, progress=False)
    assert res.status == "FINISHED" and res.run_id == run.info.run_id, res.error
    (after,) = child_runs(assets["uri"], "evalkill")
    assert after.data.tags["grid.stage"] == "done" and after.info.status == "FINISHED"
    c = MlflowClient(assets["uri"])
    assert [len(c.get_metric_history(run.info.run_id, k)) for k in tested] == [1] * len(tested)
    assert T_steps(c, run.info.run_id, "train/loss") == [1, 2, 3, 4]


def T_steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_two_grids_at_once_on_one_store(assets, tmp_path):
    """Two grid processes started together on one grid and store: each member trained by one of them
    into one run (the other reports it BUSY or skips it), every step logged once, nothing crashes."""
    path = write_grid(tmp_path, assets, [{"method": "w_encoder"}, {"method": "psp", "name": "psp"}],
                      name="twice", max_steps=8)
    runs_dir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "experiments.grid", "run", str(path), "--tracking-uri", assets["uri"],
           "--runs-dir", str(runs_dir), "--no-progress", "--jobs", "1"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]   # a BUSY member is not a failure
    runs = child_runs(assets["uri"], "twice")
    assert sorted(r.data.tags["member"] for r in runs) == ["psp", "w_encoder"], "one run per member"
    from mlflow.tracking import MlflowClient

    c = MlflowClient(assets["uri"])
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["grid.stage"] == "done", r.data.tags
        assert T_steps(c, r.info.run_id, "train/loss") == list(range(1, 9))
    again = G.run_grid(G.load_grid(path), assets["uri"], runs_dir, progress=False)
    assert [a.status for a in again] == ["SKIPPED", "SKIPPED"]


def test_convergence_grid_extends_the_demos_main_members_and_only_their_steps():
    """The 1200-step members are the demo's e4e, pSp and W encoder exactly (same config hash); the
    longer ones differ from them in max_steps alone (out_dir aside)."""
    from e4e import config as C

    demo = G.load_grid(GRIDS / "paper_ablation.yaml", "synth", "demo")
    conv = G.load_grid(GRIDS / "convergence.yaml")
    demo_hash = {m.name: G.config_hash(G.resolve_config(demo, m)) for m in demo.members}
    flat = {m.name: C.to_flat_dict(G.resolve_config(conv, m)) for m in conv.members}
    assert [m.name for m in conv.members][:3] == ["w_encoder-s4800", "e4e-s4800", "psp-s4800"]
    assert len(flat) == 9
    for name, cfg in flat.items():
        method, steps = name.rsplit("-s", 1)
        assert cfg["max_steps"] == int(steps) and cfg["model.method"] == method
        differ = {k for k in cfg if cfg[k] != flat[f"{method}-s1200"][k]} - {"out_dir"}
        assert differ == (set() if steps == "1200" else {"max_steps"}), (name, differ)
    for method in ("e4e", "psp", "w_encoder"):
        assert G.config_hash(G.resolve_config(conv, next(m for m in conv.members if m.name == f"{method}-s1200"))) \
            == demo_hash[method]


def test_synth_demo_edits_at_the_strength_the_committed_directions_were_checked_at():
    """The demo profile's edit strength (metric option, qualitative edits, LEC metric names) is the one
    ``directions.json`` records the edit quality at, and there smile, age and yaw move their attribute
    >= 1 rendered SD with mean leak <= 0.25 SD: refitting the directions or changing the strength
    without the other fails here."""
    import json

    quality = json.loads((REPO / "e4e" / "synth" / "assets" / "directions" / "directions.json").read_text())
    ev = G.load_grid(GRIDS / "paper_ablation.yaml", "synth", "demo").evaluate
    s = ev["options"]["edit_strength"]
    assert {e["strength"] for e in ev["qualitative"]["edits"]} == {s}
    assert all(m.endswith(f"_{s}") for m in ev["metrics"] if m.startswith(("lec_", "edit_fid_")))
    from e4e.config import parse_edits   # the training image rows (synth.yaml image_edits) too
    rows = parse_edits(yaml.safe_load((REPO / "experiments" / "configs" / "synth.yaml").read_text())["image_edits"])
    assert rows and {abs(v) for _, v in rows} == {s}, rows
    for grid in ("convergence", "realism_gap"):   # the grids beside the demo edit at the same strength
        other = G.load_grid(GRIDS / f"{grid}.yaml").evaluate
        assert other["options"]["edit_strength"] == s and {e["strength"] for e in other["qualitative"]["edits"]} == {s}
    for attr in ("smile", "age", "yaw"):
        q = quality["interfacegan"][attr]["quality"]
        assert q["strength"] == s and q["gain_sd"] >= 1.0 and q["leak_sd"] <= 0.25, (attr, q)
