"""Table of bad inputs: each is one `error:` line on stderr, exit 2, no traceback, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYNTH = str(REPO / "experiments" / "configs" / "synth.yaml")


def _files(tmp: Path) -> dict[str, Path]:
    files = {"tab.yaml": "model:\n  method: e4e\n\tbad: 1\n", "indent.yaml": "model:\n  method: e4e\n bad: 1\n",
             "dup.yaml": "max_steps: 3\nmax_steps: 4\n", "list.yaml": "- 1\n- 2\n",
             "grid_dup.yaml": "grid: g\ngrid: h\nmembers: [e4e]\n"}
    out = {}
    for name, text in files.items():
        (tmp / name).write_text(text)
        out[name] = tmp / name
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
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(case, tmp_path):
    _, argv, expected = case
    files = _files(tmp_path)
    before = {p: p.read_bytes() for p in files.values()}
    out = subprocess.run([sys.executable, "-m", *map(str, argv(files))], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 2, (out.stdout, out.stderr)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert {p: p.read_bytes() for p in files.values()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)   # nothing else written
