"""Portable MLflow runs (issue 30): a trained run's checkpoint is an artifact that
``experiments.evaluate --checkpoint runs:/<run_id>/...`` (and ``--run``) loads on a machine without the
run's folder; MLflow's standard tags, the data sets (``log_inputs``), ``steps`` / ``seed`` tags, the
experiment-kind tag and UI link; metrics flushed between checkpoints and each step logged once after
a resume from an older checkpoint."""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from e4e import config as C
from e4e import tracking as T
from e4e.models.stylegan2 import Generator
from e4e.train import load_training_checkpoint, train

MLFLOW_JS = Path(__import__("mlflow").__file__).parent / "server" / "js" / "build" / "static" / "js"


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return Generator(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 8}).eval()


@pytest.fixture(scope="module")
def folders(gen, tmp_path_factory):
    """train/ (8) and test/ (4) PNG folders of the tiny generator's samples."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data") / "tiny"
    with torch.no_grad():
        x = gen.sample(torch.randn(12, 32, generator=torch.Generator().manual_seed(1)), noise_mode="const")
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for split, sl in (("train", slice(0, 8)), ("test", slice(8, 12))):
        (root / split).mkdir(parents=True)
        for i, a in enumerate(arr[sl]):
            Image.fromarray(np.ascontiguousarray(a)).save(root / split / f"{i:03d}.png")
    return {"train": root / "train", "test": root / "test"}


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def tiny_cfg(out_dir, *extra):
    return C.build_config(dotlist=[
        "model.method=e4e", f"out_dir={out_dir}", "batch_size=4", "max_steps=4", "log_every=1", "val_every=2",
        "image_every=1000", "ckpt_every=2", "loss.lpips_lambda=0", "loss.id_lambda=0", "model.noise_mode=const",
        "progressive.scale_with_steps=false", "progressive.start=1", "progressive.interval=1",
        "adversarial.r1_every=2", "optim.lr=1e-3", "data.hflip=false", "progress=false", "model.encoder.small=true",
        "device=cpu", *extra])


def sets(images):
    return torch.utils.data.TensorDataset(images[:4]), torch.utils.data.TensorDataset(images[4:8])


@pytest.fixture(scope="module")
def images(gen):
    with torch.no_grad():
        return gen.sample(torch.randn(8, 32, generator=torch.Generator().manual_seed(1)), noise_mode="const").clamp(-1, 1)


def steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# ---------------------------------------------------------------------------------------------------
def test_a_trained_run_evaluates_from_its_artifact_on_another_machine(gen, folders, store, tmp_path, monkeypatch):
    """Train from image folders, then wipe the run's folder and the download cache: ``--checkpoint
    runs:/<id>/best_inverter.pt`` and ``--run <id>`` load the logged artifact and give the numbers
    the local file gave. The run carries MLflow's standard tags, steps / seed and its data sets."""
    from e4e.checkpoints import load_inverter
    from e4e.data import ImageFolderDataset
    from experiments import evaluate as E

    full = ImageFolderDataset(folders["train"], size=32)
    train_set, val_set = torch.utils.data.Subset(full, range(6)), torch.utils.data.Subset(full, range(6, 8))
    out = tmp_path / "run"
    s = train(tiny_cfg(out, "seed=3"), generator=gen, train_set=train_set, val_set=val_set)
    client = T.get_client()
    run = client.get_run(s["run_id"])
    tags = run.data.tags
    assert s["checkpoint_uri"] == f"runs:/{s['run_id']}/best_inverter.pt" == tags["checkpoint.uri"]
    assert {a.path for a in client.list_artifacts(s["run_id"])} >= {"inverter.pt", "best_inverter.pt"}
    assert "last.pt" not in {a.path for a in client.list_artifacts(s["run_id"])}   # log_last_checkpoint is off

    # MLflow's standard tags (create_run leaves them empty), steps and seed
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    job = any(os.environ.get(v) for v in T.JOB_ENV)
    assert tags[MLFLOW_SOURCE_TYPE] == ("JOB" if job else "LOCAL") and tags[MLFLOW_SOURCE_NAME]
    assert tags[MLFLOW_USER] and re.fullmatch(r"[0-9a-f]{40}", tags[MLFLOW_GIT_COMMIT])
    assert tags["git_sha"].startswith(tags[MLFLOW_GIT_COMMIT])
    assert (tags["steps"], tags["seed"]) == ("4", "3")

    # the data sets: one folder, its training and validation parts, digest of names, sizes and bytes
    digest, profile = T.folder_digest(folders["train"])
    (train_input,) = run.inputs.dataset_inputs          # validation is held out of the same folder
    ds = train_input.dataset
    assert ds.name == "tiny/train" and ds.digest == digest and ds.source_type == "local"
    assert json.loads(ds.source) == {"uri": str(folders["train"].resolve())}
    assert {t.key: t.value for t in train_input.tags} == {"mlflow.data.context": "training", "n_images": "6",
                                                          "n_validation": "2"}
    assert profile["num_images"] == 8 and "bytes" in profile["digest_of"]
    (folders["train"] / "000.png").touch()   # the content digest ignores modification times
    assert T.folder_digest(folders["train"])[0] == digest

    # evaluation from the local file, then from the artifact with the folder and the cache gone
    args = ["--data", str(folders["test"]), "--metrics", "l2", "--size", "32", "--device", "cpu",
            "--no-progress", "--tracking-uri", store]
    assert E.main(["--checkpoint", s["checkpoint"], *args]) == 0
    shutil.rmtree(out)
    monkeypatch.setenv("E4E_CACHE", str(tmp_path / "fresh_cache"))
    assert E.main(["--checkpoint", s["checkpoint_uri"], *args]) == 0
    assert E.main(["--run", s["run_id"], *args]) == 0
    exp = client.get_experiment(run.info.experiment_id)
    evals = client.search_runs([exp.experiment_id], "attributes.run_name = 'evaluate'", order_by=["start_time ASC"])
    assert len(evals) == 2
    local_l2, uri_l2 = (r.data.metrics["test/l2"] for r in evals)
    assert uri_l2 == local_l2 == client.get_run(s["run_id"]).data.metrics["test/l2"]
    assert evals[1].data.tags["checkpoint"] == s["checkpoint_uri"]
    assert evals[1].data.tags[MLFLOW_SOURCE_TYPE] in ("LOCAL", "JOB")
    (ev_input,) = client.get_run(evals[1].info.run_id).inputs.dataset_inputs
    assert ev_input.dataset.name == "tiny/test" and ev_input.dataset.digest == T.folder_digest(folders["test"])[0]
    assert {t.key: t.value for t in ev_input.tags} == {"mlflow.data.context": "evaluation", "n_images": "4"}
    # the library loader takes the URI too ($MLFLOW_TRACKING_URI's store), downloaded once into the cache
    inv = load_inverter(s["checkpoint_uri"])
    assert inv.method == "e4e"
    assert len(list((tmp_path / "fresh_cache" / "artifacts").rglob("best_inverter.pt"))) == 1
    with pytest.raises(ValueError, match="models:/"):
        load_inverter("models:/e4e/1")
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        load_inverter(f"runs:/{s['run_id']}/no_such.pt")


def test_grid_checkpoint_of_falls_back_to_the_artifact(gen, images, store, tmp_path):
    """A finished member whose folder is gone (trained on another host): ``_checkpoint_of`` gives
    its ``runs:/`` artifact, which a dependent member loads from the grid's store."""
    from e4e.checkpoints import load_inverter
    from experiments.grid.plan import MemberTask
    from experiments.grid.run import _checkpoint_of
    from experiments.grid.spec import Member

    train_set, val_set = sets(images)
    s = train(tiny_cfg(tmp_path / "run", "max_steps=2"), generator=gen, train_set=train_set, val_set=val_set)
    client = T.get_client()
    client.set_tag(s["run_id"], "checkpoint", s["checkpoint"])
    task = MemberTask("g", "synth", "demo", Member("e4e", "e4e", 0), "h" * 16, str(tmp_path / "run"), store, "0",
                      run_id=s["run_id"])
    assert _checkpoint_of(client, task) == s["checkpoint"]                       # here: the file
    shutil.move(tmp_path / "run", tmp_path / "elsewhere")
    assert _checkpoint_of(client, task) == s["checkpoint_uri"]                   # gone: the artifact
    client.delete_tag(s["run_id"], "checkpoint.uri")                             # a run without the tag
    assert _checkpoint_of(client, task) == s["checkpoint_uri"]
    fetched = load_inverter(T.fetch_artifact(s["checkpoint_uri"], store)).state_dict()
    moved = load_inverter(tmp_path / "elsewhere" / "best_inverter.pt").state_dict()
    assert fetched.keys() == moved.keys() and all(torch.equal(fetched[k], moved[k]) for k in moved)


def test_experiment_kind_tag_and_ui_link(store):
    """New experiments carry the kind the MLflow UI calls "Machine learning"; one created without it
    (or deleted) is fixed when opened; the UI link selects the training view. The values are the ones
    the installed MLflow's UI bundle knows."""
    client = T.get_client()
    exp_id = T.get_or_create_experiment(client, "fresh")
    assert client.get_experiment(exp_id).tags[T.EXPERIMENT_KIND_TAG] == "custom_model_development"
    old = client.create_experiment("old")                      # as stores made before the tag existed
    assert T.EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    client.delete_experiment(old)
    assert T.get_or_create_experiment(client, "old") == old
    exp = client.get_experiment(old)
    assert exp.lifecycle_stage == "active" and exp.tags[T.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert T.ui_url(old) == f"http://127.0.0.1:5000/#/experiments/{old}?workflowType=machine_learning"
    assert T.ui_url("7", "abc", base="http://h:1/").endswith("/#/experiments/7/runs/abc?workflowType=machine_learning")
    bundles = list(MLFLOW_JS.glob("*.js"))
    if not bundles:
        pytest.skip("this MLflow has no built UI")
    text = "".join(p.read_text(errors="ignore") for p in bundles if "experimentKind" in p.read_text(errors="ignore")
                   or "workflowType" in p.read_text(errors="ignore"))
    assert f'CUSTOM_MODEL_DEVELOPMENT="{T.EXPERIMENT_KIND_TRAINING}"' in text
    assert f'"{T.EXPERIMENT_KIND_TAG}"' in text
    assert f'MACHINE_LEARNING="{T.UI_WORKFLOW_TRAINING}"' in text and f'get("{T.UI_WORKFLOW_PARAM}")' in text


def test_metrics_are_flushed_between_checkpoints_and_each_step_lands_once(gen, images, store, tmp_path):
    """flush_every=2 with checkpoints every 3 steps: a run stopped at step 5 (a kill: no flush) holds
    steps 1-4 although last.pt is step 3's; resumed, it replays 4 and 5 and logs each step once, with
    the weights and losses of an uninterrupted run."""
    train_set, val_set = sets(images)
    extra = ("max_steps=9", "ckpt_every=3", "flush_every=2", "flush_seconds=0")
    ref = train(tiny_cfg(tmp_path / "ref", *extra), generator=gen, train_set=train_set, val_set=val_set)
    out = tmp_path / "killed"
    first = train(tiny_cfg(out, *extra), generator=gen, train_set=train_set, val_set=val_set, stop_after=5)
    client = T.get_client()
    assert first["stopped"] and load_training_checkpoint(out / "last.pt")["step"] == 3
    assert steps(client, first["run_id"], "train/loss") == [1, 2, 3, 4]         # beyond the checkpoint
    assert steps(client, first["run_id"], "val/loss") == [2, 4]
    final = train(tiny_cfg(out, *extra), generator=gen, train_set=train_set, val_set=val_set)
    assert final["run_id"] == first["run_id"] and final["final_losses"] == ref["final_losses"]
    for key in ("train/loss", "train/loss_l2", "train/progressive_stage"):
        assert steps(client, final["run_id"], key) == list(range(1, 10)), key
    assert steps(client, final["run_id"], "val/loss") == [2, 4, 6, 8, 9]
    assert steps(client, final["run_id"], "train/loss_r1") == [1, 3, 5, 7, 9]
    a, b = load_training_checkpoint(tmp_path / "ref" / "last.pt"), load_training_checkpoint(out / "last.pt")
    for k in a["inverter"]:
        assert torch.equal(a["inverter"][k], b["inverter"][k]), k


def test_flush_by_time_before_the_first_checkpoint(gen, images, store, tmp_path):
    """flush_seconds reached at every logged step, no checkpoint yet: the stopped run holds its first
    step; the restart adopts the run (run.json) and logs steps 2.. once."""
    train_set, val_set = sets(images)
    extra = ("ckpt_every=100", "flush_every=0", "flush_seconds=1e-9")
    first = train(tiny_cfg(tmp_path, *extra), generator=gen, train_set=train_set, val_set=val_set, stop_after=2)
    client = T.get_client()
    assert not (tmp_path / "last.pt").exists() and steps(client, first["run_id"], "train/loss") == [1]
    final = train(tiny_cfg(tmp_path, *extra), generator=gen, train_set=train_set, val_set=val_set)
    assert final["run_id"] == first["run_id"]
    assert steps(client, final["run_id"], "train/loss") == [1, 2, 3, 4]


def test_flush_settings_are_checked_and_do_not_change_the_config_hash(tmp_path):
    a = tiny_cfg(tmp_path)
    b = tiny_cfg(tmp_path, "flush_every=0", "flush_seconds=5", "log_last_checkpoint=true")
    assert C.config_hash(a) == C.config_hash(b)
    with pytest.raises(C.ConfigError, match="flush_seconds"):
        tiny_cfg(tmp_path, "flush_seconds=-1")
