"""Packaging: environment.yml, the Makefile and pyproject.toml declare the same dependency set; the
optional extras are what e4e.extras names; a missing optional package is one error naming its extra."""
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TORCH_PAIR = ("torch", "torchvision")  # ranges in pyproject, the tested pins in the Makefile / environment.yml


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower()


def _declared() -> dict[str, str]:
    """name -> requirement of the dependencies and every extra but [all]."""
    reqs = list(PYPROJECT["dependencies"])
    for extra, items in PYPROJECT["optional-dependencies"].items():
        if extra != "all":
            reqs += items
    return {_name(r): r.replace(" ", "") for r in reqs}


def _makefile_torch_pins() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text()
    line = re.search(r"^TORCH \?= (.+)$", text, re.M).group(1)
    return {_name(r): r for r in line.split()}


def test_environment_matches_pyproject():
    declared = _declared()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = {_name(r): r.split("#")[0].replace(" ", "") for r in pip}
    assert set(conda) == set(declared)
    for name in TORCH_PAIR:  # pinned to the tested build, inside pyproject's range
        assert conda[name] == _makefile_torch_pins()[name]
    assert {k: v for k, v in conda.items() if k not in TORCH_PAIR} == \
        {k: v for k, v in declared.items() if k not in TORCH_PAIR}
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert Requirement("x" + PYPROJECT["requires-python"]).specifier.contains(py.split("=")[1] + ".0")


def test_torch_is_a_range_and_the_tested_pins_are_in_it():
    declared = {Requirement(r).name: Requirement(r) for r in PYPROJECT["dependencies"]}
    for name, pin in _makefile_torch_pins().items():
        spec = declared[name].specifier
        assert len(spec) == 2 and not any(s.operator == "==" for s in spec), f"{name} must be a range"
        assert spec.contains(next(iter(Requirement(pin).specifier)).version)


def test_extras_all_and_make_install():
    extras = PYPROJECT["optional-dependencies"]
    assert {"faces", "slurm", "notebooks", "dev", "all"} <= set(extras)
    (everything,) = [Requirement(r) for r in extras["all"]]
    assert everything.name == PYPROJECT["name"] and everything.extras == set(extras) - {"all"}
    assert re.search(r"^EXTRAS \?= all$", (ROOT / "Makefile").read_text(), re.M)
    from e4e.extras import EXTRAS

    assert set(EXTRAS) <= set(extras)
    assert "onnxruntime" not in _declared()  # never imported by the project; insightface brings it


def test_ci_calls_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


# ------------------------------------------------------------------------------------------------
# a missing optional package: one clear error naming the extra
# ------------------------------------------------------------------------------------------------
def _dlib_identity():
    from e4e.identity import DlibIdentity

    DlibIdentity()


def _align():
    from e4e.align import load_predictor

    load_predictor()


def _submitit(tmp_path):
    from experiments.grid.launchers import SubmititLauncher

    SubmititLauncher(tmp_path, "local", {})


def _report(tmp_path):
    from experiments.report import execute_notebooks

    execute_notebooks([tmp_path / "x.ipynb"], uri="sqlite:///" + str(tmp_path / "x.db"), out=tmp_path)


def _make_notebooks(tmp_path):
    from experiments.make_notebooks import build

    build(tmp_path / "nb")


def _insightface(tmp_path):
    from metrics.identity import _InsightFaceArcFace

    _InsightFaceArcFace(tmp_path / "w.onnx")


@pytest.mark.parametrize("module,extra,call", [
    ("dlib", "faces", lambda tmp: _align()),
    ("dlib", "faces", lambda tmp: _dlib_identity()),
    ("insightface", "faces", _insightface),
    ("submitit", "slurm", _submitit),
    ("nbclient", "notebooks", _report),
    ("nbformat", "notebooks", _make_notebooks),
])
def test_missing_extra_names_it(monkeypatch, tmp_path, module, extra, call):
    from e4e.cli import user_error_message
    from e4e.extras import MissingExtraError

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    with pytest.raises(MissingExtraError, match=rf"\[{extra}\].*pip install 'e4e-lab\[{extra}\]'") as info:
        call(tmp_path)
    assert isinstance(info.value, ImportError)
    message = user_error_message(info.value)  # what a guarded CLI prints after "error: "
    assert message and "\n" not in message and f"[{extra}]" in message


def test_missing_face_models_names_the_extra(monkeypatch):
    import importlib.util

    from e4e.align import dlib_model_file
    from e4e.extras import MissingExtraError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "face_recognition_models"
                        else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"\[faces\]"):
        dlib_model_file("shape_predictor_68_face_landmarks.dat")
