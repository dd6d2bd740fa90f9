"""Every checkpoint the project reads is loaded with weights_only=True: a planted pickle is refused
without executing, with a ValueError that names the file."""
import pickle

import pytest
import torch

from e4e.checkpoints import rng_state, set_rng_state


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def _plant(path, marker):
    torch.save({"format": "e4e-lab/train", "step": 1, "x": _Payload(marker)}, path)


def test_trainer_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    from e4e.train import load_training_checkpoint

    marker, ck = tmp_path / "executed", tmp_path / "last.pt"
    _plant(ck, marker)
    with pytest.raises(ValueError, match="last.pt.*pickles Python objects"):
        load_training_checkpoint(ck)
    assert not marker.exists()


def test_gan_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    from e4e.synth.export import export_generator

    marker, ck = tmp_path / "executed", tmp_path / "last.pt"
    _plant(ck, marker)
    with pytest.raises(ValueError, match="last.pt"):
        export_generator(ck, tmp_path / "g.pt")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_text_or_truncated_training_checkpoint_names_the_file(tmp_path, content):
    from e4e.train import load_training_checkpoint

    (tmp_path / "last.pt").write_bytes(content)
    with pytest.raises(ValueError, match="last.pt"):
        load_training_checkpoint(tmp_path / "last.pt")


def test_rng_state_is_plain_and_round_trips(tmp_path):
    import random

    import numpy as np

    st = rng_state()
    torch.save(st, tmp_path / "rng.pt")
    back = torch.load(tmp_path / "rng.pt", weights_only=True)
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(back)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert pickle.dumps(back)  # plain containers


@pytest.mark.parametrize("cli", ["experiments.invert", "experiments.evaluate"])
def test_cli_refuses_a_pickled_checkpoint_unless_allow_pickle_is_given(cli, tmp_path):
    """The command line's only way past the safe loader is ``--allow-pickle``, and it warns."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    marker, ck = tmp_path / "executed", tmp_path / "inverter.pt"
    torch.save({"x": _Payload(marker)}, ck)
    (tmp_path / "imgs").mkdir()
    args = [sys.executable, "-m", cli, "--checkpoint", str(ck), "--device", "cpu"]
    args += (["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out")] if cli.endswith("invert")
             else ["--data", str(tmp_path / "imgs"), "--no-mlflow"])
    r = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--allow-pickle" in lines[0], lines
    assert not marker.exists()
    r = subprocess.run(args + ["--allow-pickle"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert "warning: --allow-pickle" in r.stderr
    assert marker.exists()                       # the user asked for it: the file's code ran
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]   # and it is no inverter
