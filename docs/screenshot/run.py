"""docs/mlflow_runs_table.png (``make screenshot``): the MLflow UI's runs table of a grid, taken by
Playwright driving Debian's chromium (docs/screenshot/screenshot.mjs).

    python docs/screenshot/run.py [--tracking-uri URI] [--experiment synth] [--out docs/mlflow_runs_table.png]

Without --tracking-uri: a tiny grid (e4e, pSp, W encoder, e4e without delta regularisation, and the
optimisation started from e4e's codes; the tests' tiny generator and images, 12 steps, about a minute
on 2 cores) is run into a temporary sqlite store. A sqlite (or other) store is shown by `mlflow ui`
started here on a free port; an http URI is a tracking server (make server), whose own UI is used.
The page is the link the grid prints (``?workflowType=machine_learning``); the script fails if it
opens on the GenAI pages instead of the runs table. Needs node, ``npm ci`` in docs/screenshot and
/usr/bin/chromium (``make screenshot`` sets them up)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from e4e.cli import HelpFormatter, Parser  # noqa: E402

SHOT_DIR = Path(__file__).resolve().parent
MEMBERS = [{"method": "e4e"}, {"method": "psp"}, {"method": "w_encoder"},
           {"method": "e4e", "name": "e4e-no-dreg", "delta_reg": False},
           {"method": "optim_from_encoder", "depends_on": "e4e"}]


def tiny_grid_store(root: Path) -> str:
    """A tiny grid run into ``root/mlruns/mlflow.db``; returns the store's URI."""
    from test_grid import _tiny_assets, write_grid

    from experiments import grid as G

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    assets = _tiny_assets(root)
    path = write_grid(root, assets, MEMBERS, name="tiny", max_steps=12)
    t0 = time.perf_counter()
    results = G.run_grid(G.load_grid(path), uri, root / "runs", progress=False)
    bad = [(r.member, r.status, r.error) for r in results if r.status != "FINISHED"]
    if bad:
        raise SystemExit(f"error: the tiny grid did not finish: {bad}")
    print(f"tiny grid: {len(results)} members in {time.perf_counter() - t0:.0f} s into {uri}", flush=True)
    return uri


def start_ui(uri: str, log: Path, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    from experiments import server as S

    port = S.free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + timeout
    while not S.healthy(base):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_ui(proc)
            raise SystemExit(f"error: mlflow ui did not start (see {log})")
        time.sleep(0.5)
    return proc, base


def stop_ui(proc: subprocess.Popen) -> None:
    from experiments import server as S

    S._stop_group(proc.pid, grace_s=15)
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python docs/screenshot/run.py", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--tracking-uri", default=None,
                    help="the store to show (default: a tiny grid run into a temporary sqlite store)")
    ap.add_argument("--experiment", default="synth", help="the MLflow experiment")
    ap.add_argument("--out", default=str(REPO / "docs" / "mlflow_runs_table.png"), help="the PNG")
    ap.add_argument("--metrics", default="summary/l2,summary/msssim,summary/swd,summary/dist_w",
                    help="metric columns shown through the column picker")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    from e4e.tracking import ui_url

    with tempfile.TemporaryDirectory(prefix="e4e-screenshot-") as tmp:
        uri = args.tracking_uri or tiny_grid_store(Path(tmp))
        exp = MlflowClient(uri).get_experiment_by_name(args.experiment)
        if exp is None:
            raise SystemExit(f"error: no experiment {args.experiment!r} in {uri}")
        served = uri.lower().startswith(("http://", "https://"))
        proc, base = (None, uri) if served else start_ui(uri, Path(tmp) / "mlflow_ui.log")
        try:
            url = ui_url(exp.experiment_id, base=base)
            print(f"screenshot of {url}", flush=True)
            cmd = ["node", str(SHOT_DIR / "screenshot.mjs"), "--url", url, "--out", str(Path(args.out).resolve()),
                   "--metrics", args.metrics, "--expand", "--crop", "470"]
            return subprocess.run(cmd, cwd=SHOT_DIR).returncode
        finally:
            if proc is not None:
                stop_ui(proc)


if __name__ == "__main__":
    sys.exit(main())
