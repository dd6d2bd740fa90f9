"""bench/bench_step_vs.py: each variant trains in its own process on the code it names."""
import json

import pytest

from bench import bench_step_vs as B


@pytest.mark.slow
def test_step_vs_runs_both_checkouts_and_reports_ratios_against_the_ref(tmp_path):
    # this checkout as its own reference: two processes, the same code, a real ratio
    assert B.main(["--ref-path", str(B.ROOT), "--steps", "2", "--rounds", "1", "--variants", "ref:fp32",
                   "this:fp32", "--json", str(tmp_path / "r.json")]) == 0
    (r,) = json.loads((tmp_path / "r.json").read_text())["rounds"]
    assert r["ref:fp32"]["speedup"] == 1.0 and r["this:fp32"]["median"] > 0
    assert r["this:fp32"]["speedup"] == pytest.approx(r["ref:fp32"]["median"] / r["this:fp32"]["median"])


def test_step_vs_rejects_an_unknown_variant(capsys):
    with pytest.raises(SystemExit) as e:
        B.main(["--variants", "ref:fp64"])
    assert e.value.code == 2 and "ref:fp64" in capsys.readouterr().err
