"""The tracking-server mode (experiments.server, `make server`): PostgreSQL and `mlflow server` started
in a temporary folder on free ports, a tiny grid run by two processes at once against the http URI,
each member trained once, each metric step logged once, artifacts uploaded through the server, the
parent run's note written; then stopped cleanly.

Never skipped: without PostgreSQL's server binaries (apt-get install postgresql; `make test` installs
them when run as root) or psycopg2 (the [server] extra) the test fails and says which is missing.
Run as root (CI), PostgreSQL runs as an unprivileged user (experiments.server: postgres or nobody), so
the server folder is made in a world-searchable temporary folder, not under pytest's 0700 tmp_path."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from experiments import grid as G
from experiments import server as S
from test_grid import _tiny_assets, child_runs, write_grid

REPO = Path(__file__).resolve().parent.parent
MAX_STEPS = 6


def _server_cli(*args, timeout=240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.server", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server():
    """A running server in a fresh folder: {"url", "dir"}; stopped (and the folder removed) afterwards."""
    try:
        S.postgres_bin()
    except S.ServerError as e:
        pytest.fail(f"the tracking-server test needs PostgreSQL: {e}")
    try:
        import psycopg2  # noqa: F401
    except ImportError as e:
        pytest.fail(f"the tracking-server test needs psycopg2 (the [server] extra: pip install -e '.[server]'): {e}")
    top = Path(tempfile.mkdtemp(prefix="e4e-server-test-"))
    top.chmod(0o755)   # reachable by the unprivileged user PostgreSQL runs as when the tests run as root
    folder = top / "server"
    t0 = time.perf_counter()
    out = _server_cli("start", "--dir", str(folder), "--port", str(S.free_port()), "--workers", "1")
    try:
        assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
        url = S.url(folder)
        assert url.startswith("http://127.0.0.1:") and S.healthy(url)
        yield {"url": url, "dir": folder, "start_s": time.perf_counter() - t0, "stdout": out.stdout}
    finally:
        stopped = _server_cli("stop", "--dir", str(folder))
        try:
            assert stopped.returncode == 0, stopped.stderr[-2000:]
            assert S.postgres_port(folder) is None and S._server_pid(folder, S.read_state(folder)) is None
        finally:
            shutil.rmtree(top, ignore_errors=True)


def test_server_cli_start_twice_status_url_and_errors(server):
    folder = server["dir"]
    assert "postgres: new cluster" in server["stdout"] and f"export MLFLOW_TRACKING_URI={server['url']}" in server["stdout"]
    again = _server_cli("start", "--dir", str(folder))
    assert again.returncode == 0 and "already running" in again.stdout, again.stderr
    ok, text = S.status(folder)
    assert ok and "healthy" in text and "postgres: running" in text, text
    assert S.url(folder) == server["url"]
    missing = _server_cli("url", "--dir", str(folder.parent / "none"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: no tracking server runs from"), missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert (folder / "pgpass").stat().st_mode & 0o077 == 0


@pytest.mark.slow
def test_grid_from_two_processes_against_the_server(server, tmp_path):
    """Two `experiments.grid run` processes started together with --tracking-uri http://...: every
    member trained into exactly one run, every metric step logged once, the checkpoints uploaded into
    the server's artifact folder, both parents finished with their note; a third call skips all."""
    from mlflow.tracking import MlflowClient

    uri = server["url"]
    assets = {"root": tmp_path, "uri": uri, **_tiny_assets(tmp_path)}
    path = write_grid(tmp_path, assets, [{"method": "w_encoder"}, {"method": "psp", "name": "psp"}],
                      name="served", max_steps=MAX_STEPS)
    runs_dir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "experiments.grid", "run", str(path), "--tracking-uri", uri,
           "--runs-dir", str(runs_dir), "--no-progress", "--jobs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
        assert f"{uri}/#/experiments/" in out and "workflowType=machine_learning" in out   # the server's own UI

    c = MlflowClient(uri)
    runs = child_runs(uri, "served")
    assert sorted(r.data.tags["member"] for r in runs) == ["psp", "w_encoder"], "one run per member"
    for r in runs:
        rid = r.info.run_id
        assert r.info.status == "FINISHED" and r.data.tags["grid.stage"] == "done", r.data.tags
        for key in r.data.metrics:
            steps = [m.step for m in c.get_metric_history(rid, key)]
            assert len(steps) == len(set(steps)), f"{r.data.tags['member']}: {key} steps logged twice: {sorted(steps)}"
        assert sorted(m.step for m in c.get_metric_history(rid, "train/loss")) == list(range(1, MAX_STEPS + 1))
        assert "test/l2" in r.data.metrics
        ckpt = Path(r.data.tags["checkpoint"]).name
        assert ckpt in {a.path for a in c.list_artifacts(rid)}
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert list((server["dir"] / "artifacts").rglob(f"{rid}/artifacts/{ckpt}")), "uploaded through the server"

    exp = c.get_experiment_by_name("synth")
    parents = c.search_runs([exp.experiment_id], "tags.grid = 'served' and tags.`grid.parent` = 'true'")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} <= {p.info.run_id for p in parents}
    for p in parents:
        assert "**served** on `synth`" in p.data.tags["mlflow.note.content"]

    from experiments import report as R   # the readers (report, seeds, ablation export) on the server

    assert set(R.member_runs("synth", "served", uri=uri).index) == {"psp", "w_encoder"}
    assert "w_encoder" in G.grid_status(G.load_grid(path), uri, runs_dir)

    again = G.run_grid(G.load_grid(path), uri, runs_dir, progress=False)
    assert [a.status for a in again] == ["SKIPPED", "SKIPPED"]
    (latest,) = [p for p in c.search_runs([exp.experiment_id], "tags.grid = 'served' and tags.`grid.parent` = 'true'",
                                          order_by=["attributes.start_time DESC"], max_results=1)]
    note = latest.data.tags["mlflow.note.content"]
    assert "2/2 members finished" in note and "| psp " in note and "| w_encoder " in note and "L2 ↓" in note


CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SHOT = REPO / "docs" / "screenshot"


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.is_file() or shutil.which("node") is None
                    or not (SHOT / "node_modules" / "playwright-core").is_dir(),
                    reason="needs chromium (apt-get install chromium), node and `npm ci` in docs/screenshot "
                           "(make screenshot sets them up)")
def test_the_ui_link_opens_the_training_runs_table(server, tmp_path):
    """The link the grid prints (?workflowType=machine_learning) opens the experiment on the runs
    table, not the GenAI pages, and the column picker shows a metric column (docs/screenshot)."""
    from e4e import tracking as T

    c = T.get_client(server["url"])
    exp_id = T.get_or_create_experiment(c, "ui-check")
    for name, l2 in (("a", 0.5), ("b", 0.25)):
        run = c.create_run(exp_id, run_name=name)
        T.log_batch(c, run.info.run_id, metrics={"summary/l2": l2})
        c.set_terminated(run.info.run_id)
    out = tmp_path / "table.png"
    shot = subprocess.run(["node", str(SHOT / "screenshot.mjs"), "--url", T.ui_url(exp_id, store=server["url"]),
                           "--out", str(out), "--metrics", "summary/l2", "--hide", "", "--chromium", str(CHROMIUM)],
                          cwd=SHOT, capture_output=True, text=True, timeout=400)
    assert shot.returncode == 0, shot.stderr[-3000:] + shot.stdout[-2000:]
    assert "training view: the runs table" in shot.stdout and "column summary/l2: shown" in shot.stdout
    assert out.stat().st_size > 10_000
