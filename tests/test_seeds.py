"""experiments.seeds: the across-seed aggregation of paired differences."""
import math

import pandas as pd
import pytest

from experiments.seeds import across_seeds, main


def test_across_seeds_mean_and_standard_error_over_seeds():
    long = pd.DataFrame({"metric": ["l2"] * 3 + ["lec"] * 3, "seed": [0, 1, 2] * 2,
                         "diff": [1.0, 2.0, 6.0, -1.0, -1.0, 0.5], "se": [0.1] * 6, "t": [10.0] * 6, "n": [32] * 6})
    table = across_seeds(long)
    se = pd.Series([1.0, 2.0, 6.0]).std(ddof=1) / math.sqrt(3)  # 1.5275
    assert table.loc["l2", "over seeds"] == f"+3 ± {se:.2g} (t {3 / se:+.1f})"
    assert table.loc["l2", "same sign"] == "3/3" and table.loc["lec", "same sign"] == "2/3"
    assert table.loc["l2", "seed 1"].startswith("+2 ± 0.1")


def test_missing_member_is_one_error_line(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("synth")
    assert main(["--store", uri]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "e4e" in errors[0] and "Traceback" not in err
