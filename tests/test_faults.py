"""Fault injection: the encoder trainer and the grid killed with SIGKILL at several points (before the
first checkpoint, while a checkpoint is being written, right after ``last.pt`` is replaced but before
the metrics are flushed, between checkpoints, part-way through a member's evaluation), then
restarted: the same weights as an uninterrupted run, the same MLflow run, every metric step exactly
once, no orphan run. And two grid processes started at once on one store."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[1]

# one tiny e4e run with every piece of state a resume must restore: latent D (+ pools, R1), progressive
# stages, random noise, flips, validation (best.pt) and checkpoints every 3 steps
TRAIN_SCRIPT = textwrap.dedent(r'''
    import io, os, signal, sys
    import torch
    from e4e import config as C, tracking as T
    from e4e.models.stylegan2 import Generator
    from e4e import train as TR

    out, uri, experiment, where, at = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    extra = sys.argv[6:]                # more config items (run-location keys: the reference's weights)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = Generator(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 8}).eval()
    with torch.no_grad():
        x = g.sample(torch.randn(8, 32, generator=torch.Generator().manual_seed(1)), noise_mode="const").clamp(-1, 1)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "step":                 # right after the optimiser step `at` (its metrics buffered)
        orig_add = T.MetricBuffer.add_dict
        def add_dict(self, metrics, step):
            orig_add(self, metrics, step)
            if step == at and any(k.startswith("train/") for k in metrics):
                die()
        T.MetricBuffer.add_dict = add_dict
    elif where == "after_save":         # last.pt of step `at` replaced, its rows not yet sent to MLflow
        orig_flush = T.MetricBuffer.flush
        def flush(self, client, run_id):
            if any(r[2] == at for r in self.rows):
                die()
            return orig_flush(self, client, run_id)
        T.MetricBuffer.flush = flush
    elif where == "writing":            # half of last.pt's bytes of step `at` written to its temporary file
        orig_save = torch.save
        def save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == at and "optimizer" in obj and hasattr(f, "write"):
                buf = io.BytesIO()
                orig_save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                die()
            return orig_save(obj, f, *a, **k)
        torch.save = save

    cfg = C.build_config(dotlist=[
        "model.method=e4e", f"out_dir={out}", f"experiment={experiment}", "batch_size=4", "max_steps=9",
        "log_every=1", "val_every=2", "image_every=1000", "ckpt_every=3", "loss.lpips_lambda=0",
        "loss.id_lambda=0", "model.noise_mode=random", "progressive.scale_with_steps=false",
        "progressive.start=2", "progressive.interval=2", "adversarial.r1_every=2", "adversarial.pool_size=3",
        "optim.lr=1e-3", "data.hflip=true", "progress=false", "model.encoder.small=true", "device=cpu", *extra])
    ds = torch.utils.data.TensorDataset
    s = TR.train(cfg, generator=g, train_set=ds(x[:4]), val_set=ds(x[4:8]), tracking_uri=uri)
    print("RUN", s["run_id"], s["step"])
''')


def _train(tmp_path, out, experiment, where="none", at=0, extra=()):
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), str(out), uri, experiment, where, str(at), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    r = _train(tmp, tmp / "ref", "ref")
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, torch.load(tmp / "ref" / "last.pt", weights_only=True)


@pytest.mark.parametrize("where,at", [("step", 2),          # before the first checkpoint (step 3)
                                      ("writing", 6),       # during the step-6 checkpoint write
                                      ("after_save", 3),    # last.pt of step 3 on disk, rows not flushed
                                      ("step", 5)])         # between the step-3 and step-6 checkpoints
def test_trainer_killed_resumes_exactly(where, at, reference):
    from mlflow.tracking import MlflowClient

    tmp, ref = reference
    name = f"killed_{where}_{at}"
    out = tmp / name
    first = _train(tmp, out, name, where, at)
    assert first.returncode == -9, (first.returncode, first.stderr[-3000:])
    assert "RUN" not in first.stdout
    run_id = json.loads((out / "run.json").read_text())["run_id"]   # recorded before the first step
    if where == "writing":   # the kill left a partial temporary file (best.pt's or last.pt's); last.pt is step 3's
        assert list(out.glob(".*.pt.*.tmp"))
        assert torch.load(out / "last.pt", weights_only=True)["step"] == 3
    second = _train(tmp, out, name)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.split()[-2:] == [run_id, "9"]            # the same run, adopted or resumed
    got = torch.load(out / "last.pt", weights_only=True)
    for part in ("inverter", "disc", "disc_opt", "optimizer"):
        assert json.dumps(list(ref[part]), default=str) == json.dumps(list(got[part]), default=str), part
    for k in ref["inverter"]:
        assert torch.equal(ref["inverter"][k], got["inverter"][k]), k
    for k in ref["disc"]:
        assert torch.equal(ref["disc"][k], got["disc"][k]), k
    c = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id], "no orphan run, no second run"
    assert runs[0].info.status == "FINISHED"
    steps = lambda k: sorted(m.step for m in c.get_metric_history(run_id, k))  # noqa: E731
    for key in ("train/loss", "train/loss_l2", "train/loss_d", "train/progressive_stage"):
        assert steps(key) == list(range(1, 10)), key
    assert steps("val/loss") == [2, 4, 6, 8, 9]
    assert steps("train/loss_r1") == [1, 3, 5, 7, 9]


def test_trainer_killed_after_an_intermediate_flush_logs_each_step_once(reference):
    """Metrics flushed every 2 steps between the checkpoints (every 3): killed at step 5, the store
    holds step 4 although last.pt is step 3's; the restart replays steps 4-5 and logs each step once,
    with the weights of the uninterrupted run."""
    from mlflow.tracking import MlflowClient

    tmp, ref = reference
    name, extra = "killed_after_flush", ("flush_every=2", "flush_seconds=0")
    out = tmp / name
    first = _train(tmp, out, name, "step", 5, extra)
    assert first.returncode == -9, (first.returncode, first.stderr[-3000:])
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    c = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    steps = lambda k: sorted(m.step for m in c.get_metric_history(run_id, k))  # noqa: E731
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3
    assert steps("train/loss") == [1, 2, 3, 4] and steps("val/loss") == [2, 4]   # flushed beyond the checkpoint
    second = _train(tmp, out, name, extra=extra)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.split()[-2:] == [run_id, "9"]
    got = torch.load(out / "last.pt", weights_only=True)
    for k in ref["inverter"]:
        assert torch.equal(ref["inverter"][k], got["inverter"][k]), k
    for key in ("train/loss", "train/loss_l2", "train/loss_d", "train/progressive_stage"):
        assert steps(key) == list(range(1, 10)), key
    assert steps("val/loss") == [2, 4, 6, 8, 9]
    assert steps("train/loss_r1") == [1, 3, 5, 7, 9]
