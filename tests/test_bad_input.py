"""Table of bad inputs: each is one `error:` line on stderr, exit 2, no traceback, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYNTH = str(REPO / "experiments" / "configs" / "synth.yaml")


class _Payload:
    """Unpickling this runs code (creates the file ``executed``): a planted checkpoint must never load it."""

    def __reduce__(self):
        return (Path.touch, (Path("executed"),))


def _run_dir(tmp: Path, name: str, content: bytes | None) -> Path:
    d = tmp / name
    d.mkdir()
    if content is not None:
        (d / "last.pt").write_bytes(content)
    return d


def _train_argv(tmp: Path, out_dir: str) -> list[str]:
    import numpy as np
    from PIL import Image

    imgs = tmp / "imgs"
    if not imgs.exists():
        imgs.mkdir()
        for i in range(4):
            Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(imgs / f"{i}.png")
    return ["experiments.train", "--config", str(REPO / "experiments/configs/e4e.yaml"), "--config", SYNTH,
            f"out_dir={out_dir}", "max_steps=2", "model.encoder.small=true", f"data.train_dir={imgs}",
            f"data.val_dir={imgs}", "loss.lpips_lambda=0", "batch_size=2"]


def _image_dir(tmp: Path, name: str, sizes, extra: dict[str, bytes] | None = None) -> Path:
    import numpy as np
    from PIL import Image

    d = tmp / name
    d.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    for fname, data in (extra or {}).items():
        (d / fname).write_bytes(data)
    return d


def _train_on(tmp: Path, images: Path, *extra: str) -> list[str]:
    argv = _train_argv(tmp, str(tmp / "run"))
    return [a for a in argv if not a.startswith(("data.train_dir=", "data.val_dir="))] + [
        f"data.train_dir={images}", f"data.val_dir={images}", *extra]


def _files(tmp: Path) -> dict[str, Path]:
    files = {"tab.yaml": "model:\n  method: e4e\n\tbad: 1\n", "indent.yaml": "model:\n  method: e4e\n bad: 1\n",
             "dup.yaml": "max_steps: 3\nmax_steps: 4\n", "list.yaml": "- 1\n- 2\n",
             "grid_dup.yaml": "grid: g\ngrid: h\nmembers: [e4e]\n"}
    out = {}
    for name, text in files.items():
        (tmp / name).write_text(text)
        out[name] = tmp / name
    import io
    import pickle

    import torch

    good = io.BytesIO()
    torch.save({"step": 1}, good)
    out["text_ckpt"] = _run_dir(tmp, "text_ckpt", b"hello, not a checkpoint\n") / "last.pt"
    out["truncated_ckpt"] = _run_dir(tmp, "truncated_ckpt", good.getvalue()[:200]) / "last.pt"
    out["pickle_ckpt"] = _run_dir(tmp, "pickle_ckpt", pickle.dumps({"step": _Payload()})) / "last.pt"
    (tmp / "a_file").write_text("x")
    out["a_file"] = tmp / "a_file"
    png = (tmp / "text_ckpt" / "last.pt").read_bytes()  # any non-image bytes
    _train_argv(tmp, "unused")  # the good 64x64 folder tmp/imgs
    good_png = (tmp / "imgs" / "1.png").read_bytes()
    out["bad_imgs"] = _image_dir(tmp, "bad_imgs", [(64, 64)] * 3,
                                 {"truncated.png": good_png[:60], "empty.png": b"", "text.png": png})
    out["odd_imgs"] = _image_dir(tmp, "odd_imgs", [(64, 64), (37, 100), (1, 1)])
    from e4e.checkpoints import save_generator
    from e4e.models.stylegan2 import Generator

    torch.manual_seed(0)
    save_generator(Generator(32, 16, 2, channels={4: 8, 8: 8, 16: 8, 32: 8}), tmp / "g32.pt")
    out["g32"] = tmp / "g32.pt"
    return out


CASES = [  # (id, argv builder, expected text in the error line)
    ("yaml-tab", lambda f: ["experiments.train", "--config", f["tab.yaml"], "--print-config"], "tab.yaml:3:1"),
    ("yaml-indent", lambda f: ["experiments.train", "--config", f["indent.yaml"], "--print-config"], "indent.yaml:"),
    ("yaml-duplicate-key", lambda f: ["experiments.train", "--config", f["dup.yaml"], "--print-config"], "given twice"),
    ("yaml-not-a-mapping", lambda f: ["experiments.train", "--config", f["list.yaml"], "--print-config"], "mapping"),
    ("missing-config", lambda f: ["experiments.train", "--config", "/nonexistent.yaml", "--print-config"], "not found"),
    ("unknown-nested-key", lambda f: ["experiments.train", "--config", SYNTH, "model.encoder.smal=true", "--print-config"],
     "Did you mean 'model.encoder.small'"),
    ("unknown-key", lambda f: ["experiments.train", "--config", SYNTH, "optim.lrr=1", "--print-config"], "optim.lrr"),
    ("lr-inf", lambda f: ["experiments.train", "--config", SYNTH, "optim.lr=inf", "--print-config"], "finite"),
    ("lambda-nan", lambda f: ["experiments.train", "--config", SYNTH, "loss.l2_lambda=nan", "--print-config"], "finite"),
    ("bad-precision", lambda f: ["experiments.train", "--config", SYNTH, "precision=fp8", "--print-config"], "precision"),
    ("experiment-path", lambda f: ["experiments.train", "--config", SYNTH, "experiment=../../x", "--print-config"],
     "path separators"),
    ("edit-path", lambda f: ["experiments.train", "--config", SYNTH, "image_edits=[../../f:3]", "--print-config"],
     "path separators"),
    ("grid-duplicate-key", lambda f: ["experiments.grid", "run", f["grid_dup.yaml"], "--dry-run"], "given twice"),
    ("grid-missing", lambda f: ["experiments.grid", "run", "/nonexistent_grid.yaml", "--dry-run"], "not found"),
    ("last.pt-text", lambda f: _train_argv(f["a_file"].parent, f["text_ckpt"].parent), "text_ckpt/last.pt"),
    ("last.pt-truncated", lambda f: _train_argv(f["a_file"].parent, f["truncated_ckpt"].parent), "truncated"),
    ("last.pt-pickles-code", lambda f: _train_argv(f["a_file"].parent, f["pickle_ckpt"].parent), "nothing in it was executed"),
    ("unreadable-images", lambda f: _train_on(f["a_file"].parent, f["bad_imgs"]), "3 of 6 images"),
    ("image-size-strict", lambda f: _train_on(f["a_file"].parent, f["odd_imgs"], "data.strict_size=true"),
     "2 of 3 images"),
    ("evaluate-missing-checkpoint", lambda f: ["experiments.evaluate", "--checkpoint", "/nonexistent.pt", "--data",
                                               f["bad_imgs"], "--no-mlflow"], "nonexistent.pt"),
    ("evaluate-bad-option", lambda f: ["experiments.evaluate", "--checkpoint", f["text_ckpt"], "--data",
                                       f["bad_imgs"], "--no-mlflow", "--option", "n_ref"], "key=value"),
    ("generator-domain-mismatch", lambda f: _train_on(f["a_file"].parent, f["a_file"].parent / "imgs",
                                                     f"model.generator={f['g32']}"), "32 px generator with 8 W+ rows"),
    ("out_dir-unwritable", lambda f: _train_argv(f["a_file"].parent, f["a_file"] / "run"), "not writable"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(case, tmp_path):
    _, argv, expected = case
    files = _files(tmp_path)
    cmd = [sys.executable, "-m", *map(str, argv(files))]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, (out.stdout, out.stderr)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before                      # nothing changed, nothing new (no run, no store, no payload)
    assert not (tmp_path / "executed").exists()
