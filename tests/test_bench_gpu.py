"""bench/gpu.py runs on CPU at a tiny size (the GPU numbers need a GPU; this checks the script)."""
import json

from bench import gpu


def test_gpu_bench_smoke_on_cpu(tmp_path):
    out = gpu.main(["--small", "--sizes", "64", "--modes", "fp32", "bf16", "channels_last", "--steps", "1",
                    "--warmup", "1", "--budget-s", "1e9", "--device", "cpu", "--json", str(tmp_path / "g.json"),
                    "--results", str(tmp_path / "R.md")])
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert rows == out["rows"] and len(rows) == 6            # 2 methods x 3 modes
    assert all("skipped" not in r and r["step_s"] > 0 and r["images_per_s"] > 0 for r in rows), rows
    assert "| e4e | 64 | bf16 |" in (tmp_path / "R.md").read_text()


def test_gpu_bench_respects_its_time_budget(tmp_path):
    out = gpu.main(["--small", "--sizes", "64", "--modes", "fp32", "--budget-s", "0", "--device", "cpu",
                    "--json", str(tmp_path / "g.json")])
    assert [r.get("skipped") for r in out["rows"]][1:] == ["time budget"]   # the first starts at t = 0
