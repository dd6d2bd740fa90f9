"""e4e-align (experiments/align.py) on real photos shipped by scikit-image: the astronaut (one frontal
face) and the cameraman (dlib finds no face in it)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

skdata = pytest.importorskip("skimage.data", reason="scikit-image (the [dev] extra) ships the test photos")
pytest.importorskip("dlib", reason="the [faces] extra is not installed")

from experiments import align as A  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 256


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.jpg", quality=95)
    Image.fromarray(skdata.camera()).save(folder / "camera.png")  # grayscale, no face
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = A.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def aligned(photos, tmp_path_factory) -> tuple[Path, int, str, str]:
    """One run over the photos in 2 worker processes (the parallel path)."""
    out = tmp_path_factory.mktemp("aligned") / "out"
    proc = subprocess.run([sys.executable, "-m", "experiments.align", str(photos), str(out), "--size", str(SIZE),
                           "--jobs", "2"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out, proc.returncode, proc.stdout, proc.stderr


def test_face_aligned_to_ffhq_positions(aligned):
    out, rc, stdout, stderr = aligned
    assert rc == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "no_face.txt"]
    img = Image.open(out / "astronaut.png")
    assert img.size == (SIZE, SIZE) and img.mode == "RGB"
    assert "\r" not in stderr  # plain progress lines, not a bar, when stderr is not a terminal
    from e4e.align import Aligner

    lm = Aligner(output_size=SIZE).landmarks(np.asarray(img))  # the face found again in the output
    eye_l, eye_r = lm[36:42].mean(0) / SIZE, lm[42:48].mean(0) / SIZE
    np.testing.assert_allclose(eye_l, [0.375, 0.47], atol=0.05)
    np.testing.assert_allclose(eye_r, [0.625, 0.47], atol=0.05)


def test_no_face_is_listed_not_an_error(aligned):
    out, rc, stdout, stderr = aligned
    assert rc == 0
    assert (out / "no_face.txt").read_text() == "camera.png\n"
    assert "no face: camera.png" in stderr
    assert "1 without a face" in stdout and "no_face.txt" in stdout


def test_output_records_its_source_and_settings(aligned):
    out, *_ = aligned
    tag = A.json.loads(Image.open(out / "astronaut.png").info[A.TAG])
    assert tag["source"] == "astronaut.jpg" and tag["size"] == SIZE and tag["transform_size"] == 4 * SIZE
    assert len(tag["sha256"]) == 64 and tag["padding"] is True


def test_resume_conflicts_and_bad_files(photos, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, _ = run(capsys, photos, out, "--size", 64, "--jobs", 1)
    assert rc == 0 and "1 aligned" in stdout
    first = (out / "astronaut.png").stat().st_mtime_ns

    # the same command again: nothing is re-aligned
    rc, stdout, _ = run(capsys, photos, out, "--size", 64, "--jobs", 1)
    assert rc == 0 and "0 aligned" in stdout and "1 already aligned" in stdout
    assert (out / "astronaut.png").stat().st_mtime_ns == first
    rc, _, _ = run(capsys, photos, out, "--size", 64, "--jobs", 1, "--strict")
    assert rc == 1  # --strict: a photo without a face fails the run

    # other settings: this tool's own output is aligned again
    rc, stdout, _ = run(capsys, photos, out, "--size", 48, "--jobs", 1)
    assert rc == 0 and "replacing an earlier output" in stdout
    assert Image.open(out / "astronaut.png").size == (48, 48)

    # a corrupt and a truncated photo are reported as unreadable; a file of the user's is never replaced
    bad = tmp_path / "photos"
    bad.mkdir()
    for p in photos.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "mine.jpg").write_bytes((photos / "astronaut.jpg").read_bytes())
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    data = (photos / "astronaut.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out / "mine.png")  # the user's own file, in the way
    user = (out / "mine.png").read_bytes()
    rc, stdout, stderr = run(capsys, bad, out, "--size", 48, "--jobs", 1)
    assert rc == 1
    assert f"kept: {out / 'mine.png'} exists and was not written by e4e-align" in stderr
    assert (out / "mine.png").read_bytes() == user
    listed = (out / "unreadable.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in listed] == ["corrupt.jpg", "truncated.jpg"]
    assert "unreadable: truncated.jpg: not a readable image" in stderr
    assert "1 already aligned" in stdout and "2 unreadable" in stdout
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind

    # --overwrite replaces the user's file; once the bad photos are gone the run is clean again
    rc, stdout, stderr = run(capsys, bad, out, "--size", 48, "--jobs", 1, "--overwrite")
    assert rc == 1 and Image.open(out / "mine.png").size == (48, 48)
    (bad / "corrupt.jpg").unlink()
    (bad / "truncated.jpg").unlink()
    rc, stdout, stderr = run(capsys, bad, out, "--size", 48, "--jobs", 1)
    assert rc == 0 and "2 already aligned" in stdout and not (out / "unreadable.txt").exists()


def test_stem_collisions_get_the_full_name(tmp_path):
    paths = [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "b.jpg"]
    assert list(A.output_names(paths).values()) == ["a.jpg.png", "a.png.png", "b.png"]


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        A.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "e4e-align" in text and "--size" in text and "(default: 1024)" in text and "--jobs" in text
    assert "no_face.txt" in text and "Exit code" in text


@pytest.mark.parametrize("case", ["missing_in", "in_is_file", "out_is_file", "same_dir", "empty_in", "size_zero",
                                  "size_text", "size_huge", "transform_small", "jobs_zero"])
def test_bad_input_is_one_error_line(case, photos, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    argv = {"missing_in": [tmp_path / "nope", out], "in_is_file": [a_file, out], "out_is_file": [photos, a_file],
            "same_dir": [photos, photos], "empty_in": [empty, out], "size_zero": [photos, out, "--size", "0"],
            "size_text": [photos, out, "--size", "big"], "size_huge": [photos, out, "--size", "100000"],
            "transform_small": [photos, out, "--size", "256", "--transform-size", "128"],
            "jobs_zero": [photos, out, "--jobs", "0"]}[case]
    try:
        rc = A.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    assert rc == 2
    error_line(capsys.readouterr().err)
    assert not out.exists()  # nothing written for bad input


def test_missing_faces_extra_is_one_error_line(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "dlib", raising=False)
    monkeypatch.setitem(sys.modules, "dlib", None)  # as if the [faces] extra were not installed
    rc, _, err = run(capsys, photos, tmp_path / "out", "--jobs", 1)
    assert rc == 2
    assert "[faces]" in error_line(err)
    assert not (tmp_path / "out").exists()


def test_cli_module_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.align", str(tmp_path / "nope"), str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert error_line(proc.stderr) == f"error: in_dir {tmp_path / 'nope'} does not exist"
