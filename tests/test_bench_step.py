"""bench/bench_step.py --profile: operator time grouped, on a hand-built table and on two real steps."""
import json

import pytest

from bench import bench_step as B


def test_op_shares_groups_operators_and_sums_to_one():
    shares = B.op_shares({"aten::convolution_backward": 50.0, "aten::mkldnn_convolution": 10.0,
                          "aten::mul": 20.0, "aten::mm": 5.0, "aten::copy_": 5.0, "Optimizer.step#Ranger.step": 10.0})
    assert shares == pytest.approx({"convolution": 0.6, "element-wise": 0.2, "matrix product": 0.05,
                                    "memory (copy/fill/alloc)": 0.05, "other": 0.1})
    assert B.op_shares({}) == {g: 0.0 for g in [*B.OP_GROUPS, "other"]}


@pytest.mark.slow
def test_profile_mode_trains_and_reports_the_operator_groups(tmp_path, capsys):
    res = B.main(["--profile", "--steps", "2", "--json", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text())["shares"] == pytest.approx(res["shares"])
    assert sum(res["shares"].values()) == pytest.approx(1.0) and res["shares"]["convolution"] > 0.1
    assert res["s_per_step"] > 0 and res["top"] and "| convolution |" in capsys.readouterr().out
