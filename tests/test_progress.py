"""e4e.progress: plain lines (no carriage returns) when stderr is not a terminal."""
from e4e.progress import Progress, track


def test_plain_lines_without_carriage_returns(capsys, monkeypatch):
    monkeypatch.setenv("E4E_PROGRESS", "lines")
    bar = Progress(10, "train e4e", unit="step", min_interval=0)
    for _ in range(10):
        bar.update(1)
        bar.set_postfix(loss="0.1")
    bar.write("  e4e: FINISHED (3s)")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("train e4e: 1/10 step (10%)") and "loss=0.1" in lines[1]
    assert "  e4e: FINISHED (3s)" in lines and lines[-1].startswith("train e4e: 10/10 step (100%)")


def test_rate_limited_lines_and_off(capsys, monkeypatch):
    monkeypatch.setenv("E4E_PROGRESS", "lines")
    assert list(track(range(500), "render", min_interval=3600)) == list(range(500))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("render: 500/500 it (100%)")  # one line, at the end
    monkeypatch.setenv("E4E_PROGRESS", "off")
    list(track(range(5), "quiet", min_interval=0))
    assert capsys.readouterr().err == ""
