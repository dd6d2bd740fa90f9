"""Reports: read-only helpers, notebooks executed headless, the MLflow server's REST API.

The notebooks run here against a small hand-made store laid out exactly as ``experiments.grid``
writes it (tests/test_grid.py runs them against a store a real tiny grid produced).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments import report as R

MEMBERS = [("e4e", "e4e"), ("e4e-no_dreg", "e4e"), ("psp", "psp"), ("optim_w", "optim_w")]


def make_store(root: Path, experiment: str = "synth") -> str:
    """A store with one parent run and finished, evaluated member runs (grid layout)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="grid", tags={"grid": "tiny"}).info.run_id
    rng = np.random.default_rng(0)
    for i, (member, method) in enumerate(MEMBERS):
        rid = client.create_run(exp, run_name=member, tags={
            "grid": "tiny", "member": member, "method": method, "mlflow.parentRunId": parent,
            "grid.order": str(i), "grid.stage": "done", "unavailable.lpips_alex": "AlexNet trunk missing"}).info.run_id
        ms = [Metric(f"test/{k}", float(rng.random()), 0, 0)
              for k in ("l2", "msssim", "swd_avg", "id_domain", "lec_smile_3", "edit_smile_gain", "edit_smile_leak")]
        if not method.startswith("optim"):
            ms += [Metric("train/loss", float(np.exp(-s / 30)), 0, s) for s in range(0, 100, 10)]
        client.log_batch(rid, metrics=ms)
        art = root / f"art_{i}"
        art.mkdir()
        pd.DataFrame({"l2": rng.random(8), "lec_smile_3": rng.random(8)}).to_csv(art / "per_image.csv",
                                                                                index_label="image")
        img = lambda: rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)  # noqa: E731
        np.savez_compressed(art / "qualitative.npz", inputs=img(), inversions=img(), **{"edit:smile+3": img()})
        client.log_artifacts(rid, str(art), "eval")
        client.set_terminated(rid, "FINISHED")
    # an unfinished member must not appear in the reports
    rid = client.create_run(exp, run_name="w_encoder", tags={"grid": "tiny", "member": "w_encoder",
                                                             "method": "w_encoder", "grid.stage": "train"}).info.run_id
    client.set_terminated(rid, "FAILED")
    client.set_terminated(parent, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return make_store(root)


def test_member_runs_and_tables(store, tmp_path):
    runs = R.member_runs("synth", uri=store)
    assert list(runs.index) == [m for m, _ in MEMBERS]
    table = R.metric_table(runs)
    assert list(table.columns[:3]) == ["method", "l2", "msssim"]          # distortion first
    assert table.attrs["groups"]["lec_smile_3"] == "lec"
    csv, md = R.write_table(table, "t", tmp_path)
    assert pd.read_csv(csv, index_col=0).shape == table.shape
    text = md.read_text()
    assert text.startswith("| member | method | l2 |") and text.count("\n") == len(table) + 2
    assert R.per_image(runs.loc["psp", "run_id"], uri=store).shape == (8, 3)
    q = R.qualitative(runs.loc["psp", "run_id"], uri=store)
    assert set(q) == {"inputs", "inversions", "edit:smile+3"}
    hist = R.training_history(runs.loc["e4e", "run_id"], uri=store)
    assert set(hist.key) == {"train/loss"} and len(hist) == 10


def test_missing_experiment_is_a_clear_error(store):
    with pytest.raises(LookupError, match="no MLflow experiment 'nope'"):
        R.member_runs("nope", uri=store)


@pytest.mark.slow
def test_notebooks_execute_and_write_reports(store, tmp_path):
    out = tmp_path / "reports"
    rc = R.main(["--tracking-uri", store, "--experiment", "synth", "--out", str(out)])
    assert rc == 0
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"tradeoff_distortion_editability.png", "qualitative_0.png", "training_curves.png",
            "per_image_distributions.png"} <= figures
    tables = {p.name for p in (out / "tables").iterdir()}
    assert {"ablation.csv", "ablation.md", "ablation_summary.md", "per_image_summary.csv"} <= tables
    ablation = pd.read_csv(out / "tables" / "ablation.csv", index_col=0)
    assert list(ablation.index) == [m for m, _ in MEMBERS]
    assert "lpips_alex" in (out / "tables" / "ablation.md").read_text()   # unavailable metrics are named


def test_report_help():
    out = subprocess.run([sys.executable, "-m", "experiments.report", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--tracking-uri" in out.stdout and "(default:" in out.stdout


def test_notebooks_are_generated_from_source(tmp_path):
    """notebooks/*.ipynb are what experiments.make_notebooks writes (no hand edits drifting)."""
    from experiments import make_notebooks

    written = make_notebooks.build(tmp_path)
    for p in written:
        committed = R.NOTEBOOKS_DIR / p.name
        assert committed.exists(), f"{committed} missing: run python -m experiments.make_notebooks"
        assert json.loads(committed.read_text()) == json.loads(p.read_text()), \
            f"{committed.name} differs from experiments/make_notebooks.py: regenerate it"
    assert sorted(p.name for p in written) == sorted([*R.NOTEBOOKS, *(n for v in R.GRID_NOTEBOOKS.values() for n in v)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 10) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_mlflow_server_on_loopback_lists_runs(store, tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", store,
           "--default-artifact-root", (tmp_path / "srv-artifacts").as_uri(),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline, exps = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"mlflow server exited:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
            try:
                exps = _post(f"{base}/experiments/search", {"max_results": 100}, timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        assert exps is not None, f"server not up in 120 s:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
        exp = next(e for e in exps["experiments"] if e["name"] == "synth")
        runs = _post(f"{base}/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                             "filter": "tags.grid = 'tiny'", "max_results": 100})["runs"]
        names = {r["info"]["run_name"] for r in runs}
        assert {m for m, _ in MEMBERS} | {"grid", "w_encoder"} == names
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # the server's own process group (gunicorn/uvicorn workers included)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
        log.close()
    deadline = time.monotonic() + 20   # every process of the server's group is gone
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, 9)
        pytest.fail("mlflow server processes still alive 20 s after SIGTERM")
    with socket.socket() as s:   # and the port can be listened on again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_summary_averages_only_comparable_metrics():
    """One number per axis: LEC over directions, edit gain/leak over attributes, never a mix of a
    metric with its reference level or other units."""
    m = {"l2": 0.02, "lec_smile_3": 10.0, "lec_age_3": 14.0, "lec_official_smile_3": 99.0,
         "edit_smile_gain": 1.0, "edit_age_gain": 2.0, "edit_smile_gain_raw": 50.0, "edit_smile_gain_ref": 9.0,
         "edit_smile_leak": 0.2, "edit_smile_leak_ref": 0.9,
         "latent_dist_w": 3.0, "latent_dist_w_ref": 1.0, "latent_dist_w_nn": 7.0, "latent_dist_w_nn_raw": 40.0,
         "latent_dist_w_row0": 5.0, "lec_img_smile_3": 0.01, "lec_feat_smile_3": 0.2, "edit_fid_smile_3": 40.0,
         "latent_dist_w_pca95": 1.1, "latent_dist_w_pca95_resid": 2.0, "latent_dist_w_pca95_k": 200}
    s = R.summarize(m)
    assert s["L2 ↓"] == 0.02 and s["LEC ↓"] == 12.0 and s["edit gain ↑"] == 1.5 and s["edit leak ↓"] == 0.2
    assert s["dist. to W ↓"] == 3.0 and s["FID ↓"] is None
    # the image-space LEC, edit realism and the PCA distance are their own columns, never averaged in
    assert (s["LEC img ↓"], s["LEC feat ↓"], s["edit FID ↓"], s["dist. to W (PCA) ↓"]) == (0.01, 0.2, 40.0, 1.1)


def test_paired_differences_against_a_reference():
    rng = np.random.default_rng(0)
    base = rng.normal(10, 3, 50)                       # large spread between images ...
    per = pd.concat([pd.DataFrame({"member": "ref", "image": range(50), "lec": base}),
                     pd.DataFrame({"member": "a", "image": range(50), "lec": base + 0.5 + rng.normal(0, 0.1, 50)}),
                     pd.DataFrame({"member": "b", "image": range(49), "lec": base[:49]})])
    out = R.paired_differences(per, "ref").set_index("member")
    assert out.loc["a", "n"] == 50 and abs(out.loc["a", "diff"] - 0.5) < 0.05
    assert out.loc["a", "t"] > 20                       # ... but the paired difference is resolved
    assert out.loc["b", "n"] == 49 and out.loc["b", "diff"] == 0 and "ref" not in out.index
