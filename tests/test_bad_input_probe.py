"""Issue 28's probe, as a table: every bad input is exit 2, exactly one stderr line starting with
``error:``, no traceback, and the folders (the shared inputs and the working directory, where the
default store would appear) hold the same files and bytes before and after. ``main(argv)`` runs
in-process; only the alias bomb runs in a subprocess, under a memory limit."""
from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SYNTH = str(REPO / "experiments" / "configs" / "synth.yaml")
TRAIN_KEYS = ["max_steps=2", "batch_size=2", "model.encoder.small=true", "out_dir=run"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


class _Payload:
    """Unpickling this runs code (creates ``executed``): a planted file must never load it."""

    def __reduce__(self):
        return (Path.touch, (Path("executed"),))


def _png(path: Path, h: int = 64, w: int = 64, value: int = 90) -> Path:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A small PNG whose header claims side x side pixels (PIL refuses it as a decompression bomb)."""
    data = _png(path, 4, 4).read_bytes()
    ihdr = struct.pack(">II", side, side) + data[24:29]
    chunk = b"IHDR" + ihdr
    path.write_bytes(data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:])
    return path


def _images(folder: Path, n: int = 4) -> Path:
    folder.mkdir()
    for i in range(n):
        _png(folder / f"{i}.png", value=30 * i)
    return folder


def _store(path: Path) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri).create_experiment("synth")
    return uri


def _checkpoints(w: Path, imgs: Path) -> dict[str, Path]:
    """An inverter (and broken copies), the generator, training checkpoints that do not fit."""
    from e4e import config as C
    from e4e.checkpoints import load_generator, save_inverter
    from e4e.train import SYNTH_GENERATOR, _build_inverter
    from e4e.train.state import CKPT_FORMAT, _trainable_state

    cfg = C.build_config([SYNTH], [f"data.train_dir={imgs}", f"data.val_dir={imgs}", *TRAIN_KEYS])
    g = load_generator(SYNTH_GENERATOR)
    inv = _build_inverter(cfg, g, g.latent_avg.unsqueeze(0), 64)
    out = {"inv": save_inverter(inv, w / "inv.pt"), "gen": Path(SYNTH_GENERATOR)}
    variants = {"nan": lambda o: next(iter(o["encoder"].values())).fill_(float("nan")),
                "rows8": lambda o: o["encoder_kwargs"].update(n_latent=8),
                "no_latent_avg": lambda o: o.pop("latent_avg")}
    for name, change in variants.items():
        obj = torch.load(out["inv"], weights_only=True)
        change(obj)
        torch.save(obj, w / f"{name}.pt")
        out[name] = w / f"{name}.pt"
    ck = {"format": CKPT_FORMAT, "config_hash": C.config_hash(cfg), "step": 0, "best_val": 1.0, "best_step": 0,
          "run_id": None, "rng": [], "data_order": {"epoch": 0, "pos": 0}, "optimizer": {},
          "inverter": {**_trainable_state(inv), "extra.weight": torch.zeros(1)}}
    runs = {"gen_last": (w / "gen_last", lambda: out["gen"].read_bytes()),
            "extra_key_last": (w / "extra_key_last", lambda: _saved(ck)),
            "no_optimizer_last": (w / "no_optimizer_last", lambda: _saved({k: v for k, v in ck.items()
                                                                            if k != "optimizer"}))}
    for name, (folder, content) in runs.items():
        folder.mkdir()
        (folder / "last.pt").write_bytes(content())
        out[name] = folder
    (w / "dir_last" / "last.pt").mkdir(parents=True)
    out["dir_last"] = w / "dir_last"
    (w / "code_direction.pt").write_bytes(pickle.dumps({"comp": _Payload()}))
    out["code_direction"] = w / "code_direction.pt"
    return out


def _saved(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path | str]:
    w = tmp_path_factory.mktemp("world")
    imgs = _images(w / "imgs")
    f: dict[str, Path | str] = {"root": w, "imgs": imgs, **_checkpoints(w, imgs)}
    (w / "a_file").write_text("x")
    f["a_file"] = w / "a_file"
    f["bomb_imgs"] = _images(w / "bomb_imgs", 2)
    _bomb_png(w / "bomb_imgs" / "huge.png")
    f["store"] = _store(w / "store" / "mlflow.db")
    (w / "trunc.db").write_bytes((w / "store" / "mlflow.db").read_bytes()[:8192])
    f["trunc_store"] = f"sqlite:///{w / 'trunc.db'}"
    yamls = {"defaults5.yaml": "defaults: 5\n", "defaults_null.yaml": "defaults: [null]\n",
             "deep.yaml": "image_edits: " + "[" * 20000 + "]" * 20000 + "\n",
             "recursive.yaml": "image_edits: &a [*a]\n"}
    for name, text in yamls.items():
        (w / name).write_text(text)
        f[name] = w / name
    return f


def _train(w, *extra) -> list:
    return ["experiments.train", "--config", SYNTH, f"data.train_dir={w['imgs']}", f"data.val_dir={w['imgs']}",
            *TRAIN_KEYS, *extra]


def _evaluate(w, *extra, ckpt="inv") -> list:
    return ["experiments.evaluate", "--checkpoint", w[ckpt], "--data", w["imgs"], "--no-mlflow", "--metrics", "l2",
            "--no-progress", *extra]


def _logged(w, uri: str) -> list:
    """evaluate logging to the store ``uri``."""
    return [a for a in _evaluate(w, "--tracking-uri", uri) if a != "--no-mlflow"]


def _invert(w, *extra) -> list:
    return ["experiments.invert", "--checkpoint", w["inv"], "--images", w["imgs"], "--out", "inv_out", *extra]


CASES = [  # (id, argv from the world, text expected in the error line)
    ("train-batch-larger-than-data", lambda w: _train(w, "batch_size=100"), "batch_size=100"),
    ("train-seed-negative", lambda w: _train(w, "seed=-1"), "'seed'"),
    ("train-seed-2^32", lambda w: _train(w, "seed=4294967296"), "'seed'"),
    ("train-d_lr-negative", lambda w: _train(w, "adversarial.d_lr=-1"), "adversarial.d_lr"),
    ("train-weight_decay-negative", lambda w: _train(w, "optim.weight_decay=-1"), "optim.weight_decay"),
    ("train-image_size-1", lambda w: _train(w, "data.image_size=1"), "data.image_size"),
    ("train-width-0", lambda w: _train(w, "model.encoder.width=0"), "model.encoder.width"),
    ("train-backbone-unknown", lambda w: _train(w, "model.encoder.backbone=nope"), "model.encoder.backbone"),
    ("train-val_max_images-negative", lambda w: _train(w, "data.val_max_images=-1"), "data.val_max_images"),
    ("train-device-tpu9", lambda w: _train(w, "device=tpu9"), "tpu9"),
    pytest.param("train-device-cuda-without-gpu", lambda w: _train(w, "device=cuda"), "CUDA", marks=NO_GPU,
                 id="train-device-cuda-without-gpu"),
    ("train-inverter-as-generator", lambda w: _train(w, f"model.generator={w['inv']}"), "not a StyleGAN2 generator"),
    ("train-generator-as-init", lambda w: _train(w, f"model.init_checkpoint={w['gen']}"), "not a inverter"),
    ("train-last.pt-generator", lambda w: _train(w, f"out_dir={w['gen_last']}"), "generator checkpoint"),
    ("train-last.pt-extra-key", lambda w: _train(w, f"out_dir={w['extra_key_last']}"), "does not fit this run"),
    ("train-last.pt-no-optimizer", lambda w: _train(w, f"out_dir={w['no_optimizer_last']}"), "['optimizer']"),
    ("train-last.pt-folder", lambda w: _train(w, f"out_dir={w['dir_last']}"), "is not a file"),
    ("train-decompression-bomb", lambda w: _train(w, f"data.train_dir={w['bomb_imgs']}"), "huge.png"),
    ("train-unknown-flag", lambda w: _train(w, "--bogus"), "--bogus"),
    ("yaml-defaults-5", lambda w: ["experiments.train", "--config", w["defaults5.yaml"], "--print-config"],
     "'defaults'"),
    ("yaml-defaults-null", lambda w: ["experiments.train", "--config", w["defaults_null.yaml"], "--print-config"],
     "'defaults'"),
    ("yaml-nested-20000", lambda w: ["experiments.train", "--config", w["deep.yaml"], "--print-config"], "deep"),
    ("yaml-recursive-alias", lambda w: ["experiments.train", "--config", w["recursive.yaml"], "--print-config"],
     "recursive alias"),
    ("evaluate-n-images-negative", lambda w: _evaluate(w, "--n-images", "-1"), "--n-images"),
    ("evaluate-n-images-0", lambda w: _evaluate(w, "--n-images", "0"), "--n-images"),
    ("evaluate-size-0", lambda w: _evaluate(w, "--size", "0"), "--size"),
    ("evaluate-batch-size-0", lambda w: _evaluate(w, "--batch-size", "0"), "--batch-size"),
    ("evaluate-metrics-empty", lambda w: _evaluate(w, "--metrics", ","), "--metrics"),
    pytest.param("evaluate-device-cuda-without-gpu", lambda w: _evaluate(w, "--device", "cuda"), "CUDA",
                 marks=NO_GPU, id="evaluate-device-cuda-without-gpu"),
    ("evaluate-out-is-a-file", lambda w: _evaluate(w, "--out", w["a_file"]), "is a file"),
    ("evaluate-nan-inverter", lambda w: _evaluate(w, ckpt="nan"), "NaN"),
    ("evaluate-8-rows-10-row-generator", lambda w: _evaluate(w, ckpt="rows8"), "do not fit its generator"),
    ("evaluate-inverter-without-latent_avg", lambda w: _evaluate(w, ckpt="no_latent_avg"), "['latent_avg']"),
    ("evaluate-direction-pickles-code", lambda w: _evaluate(w, "--direction", f"smile={w['code_direction']}"),
     "nothing in it was executed"),
    ("evaluate-decompression-bomb", lambda w: _evaluate(w, "--data", w["bomb_imgs"]), "huge.png"),
    ("evaluate-unknown-run", lambda w: ["experiments.evaluate", "--run", "0123abc", "--data", w["imgs"],
                                        "--tracking-uri", w["store"]], "0123abc"),
    ("evaluate-store-scheme", lambda w: _logged(w, "foo://bar"), "unknown scheme"),
    ("evaluate-store-malformed", lambda w: _logged(w, "sqlite:/x.db"), "malformed"),
    ("evaluate-store-dead-server", lambda w: _logged(w, "http://127.0.0.1:9"), "does not answer"),
    ("evaluate-store-under-a-file", lambda w: _logged(w, f"sqlite:///{w['a_file']}/mlflow.db"), "is a file"),
    ("invert-batch-size-0", lambda w: _invert(w, "--batch-size", "0"), "--batch-size"),
    ("invert-out-is-a-file", lambda w: _invert(w, "--out", w["a_file"]), "is a file"),
    ("invert-device-tpu9", lambda w: _invert(w, "--device", "tpu9"), "tpu9"),
    ("seeds-store-scheme", lambda w: ["experiments.seeds", "--store", "foo://bar"], "unknown scheme"),
    ("seeds-store-is-a-folder", lambda w: ["experiments.seeds", "--store", f"sqlite:///{w['root']}"], "folder"),
    ("seeds-store-truncated", lambda w: ["experiments.seeds", "--store", w["trunc_store"]], "truncated"),
    ("seeds-store-missing", lambda w: ["experiments.seeds", "--store", "sqlite:///nowhere/mlflow.db"], "no MLflow store"),
    ("seeds-store-under-a-file", lambda w: ["experiments.seeds", "--store", f"sqlite:///{w['a_file']}/x.db"],
     "no MLflow store"),
    ("report-store-missing", lambda w: ["experiments.report", "--tracking-uri", "sqlite:///mlruns/mlflow.db",
                                        "--out", "reports"], "no MLflow store"),
    ("report-experiment-missing", lambda w: ["experiments.report", "--tracking-uri", w["store"], "--experiment",
                                             "nope", "--out", "reports"], "'nope'"),
    ("report-notebook-missing", lambda w: ["experiments.report", "--tracking-uri", w["store"], "--notebooks",
                                           "nope.ipynb", "--out", "reports"], "nope.ipynb"),
]


def _snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder under ``roots``."""
    return {str(p): (p.read_bytes() if p.is_file() else None) for r in roots for p in sorted(r.rglob("*"))}


def _run(argv: list) -> int:
    import importlib

    main = importlib.import_module(argv[0]).main
    try:
        return main([str(a) for a in argv[1:]])
    except SystemExit as e:  # argparse usage errors
        return e.code


@pytest.mark.parametrize("name, argv, expected", [pytest.param(*c, id=c[0]) if type(c) is tuple else c
                                                   for c in CASES])
def test_bad_input_is_one_error_line_and_nothing_changes(name, argv, expected, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("E4E_TRACKING_URI", raising=False)
    before = _snapshot(world["root"], tmp_path)
    t0 = time.perf_counter()
    code = _run(argv(world))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err
    assert time.perf_counter() - t0 < 60
    assert _snapshot(world["root"], tmp_path) == before   # nothing lost, changed or created (no store, no out_dir)
    assert not (tmp_path / "executed").exists()


def _bomb(head: str, item: str) -> str:
    """A "billion laughs" YAML file: 9 'lol's, then six levels of 9 aliases each (9**7 values expanded)."""
    lines = [f'{item}&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdef", "bcdefg"):
        lines.append(f"{item}&{name} [{','.join([f'*{prev}'] * 9)}]")
    return head + "\n".join(lines) + "\n"


BOMBS = {"model.encoder": _bomb("model:\n  encoder:\n    small: [\n", "      ").replace("]\n      &", "],\n      &")
         .rstrip("\n") + "]\n",
         "image_edits": _bomb("image_edits:\n", "  - ")}
BOUNDED = """import resource, sys, time
from experiments.train import main
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, vm + 256 * 2**20))  # 256 MiB above the imports
t0 = time.perf_counter()
code = main(sys.argv[1:])
print(f"seconds {time.perf_counter() - t0:.2f}")
sys.exit(code)
"""


@pytest.mark.parametrize("where", sorted(BOMBS))
def test_yaml_alias_bomb_is_refused_fast_in_bounded_memory(where, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMBS[where])
    out = subprocess.run([sys.executable, "-c", BOUNDED, "--config", str(bomb), "--print-config"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "YAML value refused" in errors[0], out.stderr
    assert len(errors[0]) < 400 and "Traceback" not in out.stderr
    assert float(out.stdout.split()[-1]) < 5


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    import os

    from e4e.fileio import STALE_AFTER_S, _tmp_host, atomic_write

    dead = tmp_path / f".last.pt.{_tmp_host()}-999999999.x.tmp"
    live = tmp_path / f".last.pt.{_tmp_host()}-{os.getpid()}.x.tmp"
    old = tmp_path / ".last.pt.other-host-1.x.tmp"
    other = tmp_path / f".best.pt.{_tmp_host()}-999999999.x.tmp"
    for p in (dead, live, old, other):
        p.write_text("partial")
    os.utime(old, (time.time() - 2 * STALE_AFTER_S,) * 2)
    atomic_write(tmp_path / "last.pt", lambda f: f.write(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "last.pt"])


def test_disk_full_from_torch_save_is_one_error_line(tmp_path):
    import errno

    from e4e.cli import user_error_message
    from e4e.fileio import atomic_write

    def full(f):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed ... unexpected pos 64 vs 0")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "last.pt", full)
    assert info.value.errno == errno.ENOSPC
    assert "no space left" in user_error_message(info.value) and "last.pt" in user_error_message(info.value)
    assert list(tmp_path.iterdir()) == []


def test_exif_orientation_is_applied_with_a_warning(tmp_path):
    import numpy as np
    from PIL import Image

    from e4e.data import load_image

    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :8] = 255                                  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6                                  # "rotate 90 CW to view"
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=100)
    with pytest.warns(UserWarning, match="EXIF orientation 6 applied"):
        x = load_image(tmp_path / "r.jpg")
    assert tuple(x.shape[-2:]) == (16, 8) and x[:, :8].mean() > 0.5 > x[:, 8:].mean()


def test_locked_store_is_one_error_line_within_the_timeout(world, tmp_path, monkeypatch, capsys):
    import shutil
    import sqlite3

    import e4e.tracking as T

    db = shutil.copy(Path(world["store"][len("sqlite:///"):]), tmp_path / "locked.db")
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(T, "STORE_TIMEOUT_S", 0.2)
    try:
        assert _run(["experiments.seeds", "--store", f"sqlite:///{db}"]) == 2
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip()] and "locked" in err
