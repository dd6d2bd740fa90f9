"""Align a folder of face photos the FFHQ way (e4e.align: dlib's face detector and 68 landmarks,
the FFHQ crop square, Lanczos resampling), the preparation e4e / pSp expect before inversion.

    e4e-align photos/ aligned/ --size 1024
    python -m experiments.align photos/ aligned/ --size 256 --jobs 2

Input: the images directly in IN_DIR (.png .jpg .jpeg .webp .bmp .tif .tiff; sub-folders are not
read), any mode (converted to RGB), EXIF orientation applied. The largest face of each is aligned.

Output: one RGB PNG per photo, OUT_DIR/<stem>.png (inputs that share a stem, a.jpg and a.png, are
written as a.jpg.png and a.png.png). Each PNG is written under a temporary name and renamed into
place, so a killed run leaves no half-written file, and it records its source (SHA-256) and the
alignment settings in a PNG text chunk 'e4e-align'. Running the same command again is a resume:
outputs whose source and settings are unchanged are skipped, outputs this tool wrote for another
source or other settings are aligned again, and a file this tool did not write is never replaced:
it is kept and reported (--overwrite replaces it).

Images in which dlib finds no face are printed and listed in OUT_DIR/no_face.txt; unreadable or
corrupt files are printed and listed in OUT_DIR/unreadable.txt ("name: reason"). Both lists are
rewritten by every run (removed when empty).

Exit code: 0 when every image was aligned (now or by an earlier run) or has no face: a photo without
a detectable face is a property of the data, listed but not a failure (--strict makes it one);
1 when an image was unreadable, could not be aligned, or its output was kept because a file this
tool did not write was in the way; 2 with one 'error:' line for bad input (IN_DIR missing or without
images, OUT_DIR a file or IN_DIR itself, a bad option, the [faces] extra not installed).

Progress: a bar on a terminal, plain lines otherwise (E4E_PROGRESS=bar|lines|off).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from pathlib import Path

from e4e.cli import HelpFormatter, Parser, guarded, positive_int

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TAG = "e4e-align"  # the PNG text chunk: JSON {sha256, size, transform_size, padding, upsample, recipe, source}
RECIPE = 1                  # bump when e4e.align's output changes: outputs of an older recipe are aligned again
NO_FACE_LIST, UNREADABLE_LIST = "no_face.txt", "unreadable.txt"
MIN_SIZE, MAX_SIZE, MAX_TRANSFORM = 16, 2048, 8192


class BadInput(ValueError):
    """Bad command-line input (an ``error:`` line and exit code 2; raised without importing torch,
    which ``e4e.config.ConfigError`` would)."""


def default_jobs() -> int:
    """One process per available core, at most 8 (each holds dlib's models and a
    transform_size^2 image)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _int_between(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value
    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="e4e-align", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("in_dir", help="folder of face photos")
    p.add_argument("out_dir", help="folder for the aligned PNGs (created; may already hold an earlier run's output)")
    p.add_argument("--size", type=_int_between(MIN_SIZE, MAX_SIZE), default=1024,
                   help="output side in pixels (FFHQ: 1024; the e4e / pSp encoders read 256)")
    p.add_argument("--transform-size", type=_int_between(MIN_SIZE, MAX_TRANSFORM), default=None,
                   help="side of the quad resampling before the Lanczos downsampling to --size, >= --size "
                        "(default: 4 x --size, FFHQ's 4096 for 1024; at most 8192)")
    p.add_argument("--upsample", type=_int_between(0, 3), default=1,
                   help="dlib detector upsampling steps (1 finds faces down to ~40 px; 2 smaller ones, slower)")
    p.add_argument("--no-padding", action="store_true",
                   help="no reflection padding where the crop square leaves the photo (black there instead)")
    p.add_argument("--jobs", type=positive_int, default=default_jobs(),
                   help="parallel processes (default: the available cores, at most 8: %(default)s here)")
    p.add_argument("--overwrite", action="store_true",
                   help="align every image again and replace its output, also a file this tool did not write")
    p.add_argument("--strict", action="store_true", help="exit code 1 also when some image has no face")
    return p


# ------------------------------------------------------------------------------------------------
# inputs and output names
# ------------------------------------------------------------------------------------------------
def list_inputs(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in EXTENSIONS and not p.name.startswith(".") and p.is_file())


def output_names(paths: list[Path]) -> dict[Path, str]:
    """``<stem>.png`` per input; ``<name>.png`` for inputs whose stems collide (case-insensitively)."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem.lower()] = stems.get(p.stem.lower(), 0) + 1
    names = {p: (p.stem if stems[p.stem.lower()] == 1 else p.name) + ".png" for p in paths}
    seen: dict[str, Path] = {}
    for p, name in names.items():
        if name.lower() in seen:
            raise BadInput(f"{seen[name.lower()].name} and {p.name} would both be written as {name}: rename one")
        seen[name.lower()] = p
    return names


def check_inputs(in_dir: str, out_dir: str) -> tuple[Path, Path, list[Path]]:
    """The input folder and its images, the output folder; ``BadInput`` for bad input (nothing is
    created)."""
    from e4e.fileio import folder_problem

    src = Path(in_dir)
    if not src.exists():
        raise BadInput(f"in_dir {src} does not exist")
    if not src.is_dir():
        raise BadInput(f"in_dir {src} is a file, not a folder")
    out = Path(out_dir)
    problem = folder_problem(out)
    if problem:
        raise BadInput(f"out_dir {out}: {problem}")
    if out.exists() and out.resolve() == src.resolve():
        raise BadInput(f"out_dir {out} is in_dir itself: give another folder for the aligned images")
    try:
        paths = list_inputs(src)
    except PermissionError as e:
        raise BadInput(f"in_dir {src}: cannot list it ({e.strerror})") from None
    if not paths:
        raise BadInput(f"no images ({' '.join(EXTENSIONS)}) directly in in_dir {src}")
    return src, out, paths


# ------------------------------------------------------------------------------------------------
# one image (in a worker process, or in this one with --jobs 1)
# ------------------------------------------------------------------------------------------------
_ALIGNER = None
_FILE_MODE = None


def _file_mode() -> int:
    """rw for whom the umask allows (the temporary files of ``atomic_write`` are private, 0600)."""
    global _FILE_MODE
    if _FILE_MODE is None:
        mask = os.umask(0)
        os.umask(mask)
        _FILE_MODE = 0o666 & ~mask
    return _FILE_MODE


def _save_png(image, info, f) -> None:
    image.save(f, format="PNG", pnginfo=info)
    os.fchmod(f.fileno(), _file_mode())


def _aligner(settings: dict):
    """This process's ``e4e.align.Aligner`` for ``settings`` (dlib's models are loaded once)."""
    global _ALIGNER
    if _ALIGNER is None or _ALIGNER[0] != settings:
        from e4e.align import Aligner

        aligner = Aligner(output_size=settings["size"], transform_size=settings["transform_size"],
                          enable_padding=settings["padding"], upsample=settings["upsample"])
        if _ALIGNER is not None:
            aligner._models = _ALIGNER[1]._models
        _ALIGNER = (dict(settings), aligner)
    return _ALIGNER[1]


def _init_worker(settings: dict) -> None:
    _file_mode()
    _aligner(settings)


def existing_tag(path: Path) -> dict | None | bool:
    """The ``e4e-align`` record of an existing output: a dict, False for a file this tool did not
    write (or cannot read back), None when there is no file."""
    from PIL import Image

    if not path.exists():
        return None
    try:
        with Image.open(path) as im:
            tag = json.loads(im.info.get(TAG, "null"))
    except Exception:  # noqa: BLE001  (any unreadable file is someone else's)
        return False
    return tag if isinstance(tag, dict) else False


def _same(tag: dict, record: dict) -> bool:
    return all(tag.get(k) == v for k, v in record.items() if k != "source")


def _decode(data: bytes):
    """uint8 RGB array of an encoded image (EXIF orientation applied); ValueError when unreadable."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise ValueError(f"too large to decode safely ({e})") from None
    except Image.UnidentifiedImageError:
        raise ValueError("not a readable image (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's ways to say "corrupt" / "truncated"
        text = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ValueError(f"not a readable image ({text})") from None


def align_one(src: str, dst: str, settings: dict, overwrite: bool = False) -> tuple[str, str]:
    """(status, detail) for one image: status 'aligned' | 'realigned' | 'skipped' | 'no_face' |
    'unreadable' | 'kept' | 'failed'."""
    from e4e.align import FaceNotFoundError
    from e4e.fileio import atomic_write

    out = Path(dst)
    try:
        data = Path(src).read_bytes()
    except OSError as e:
        return "unreadable", f"cannot read it ({e.strerror or e})"
    record = {"sha256": hashlib.sha256(data).hexdigest(), "recipe": RECIPE, **settings, "source": Path(src).name}
    tag = existing_tag(out)
    if tag is False and not overwrite:
        return "kept", f"{out} exists and was not written by e4e-align: kept (--overwrite replaces it)"
    if isinstance(tag, dict) and _same(tag, record) and not overwrite:
        return "skipped", ""
    try:
        arr = _decode(data)
    except ValueError as e:
        return "unreadable", str(e)
    try:
        aligned = _aligner(settings)(arr)
    except FaceNotFoundError:
        if isinstance(tag, dict):  # this tool's output for an earlier version of the photo
            out.unlink(missing_ok=True)
        return "no_face", ""
    except Exception as e:  # noqa: BLE001  (reported per image; the other images go on)
        return "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(TAG, json.dumps(record, sort_keys=True))
    atomic_write(out, lambda f: _save_png(aligned, info, f))
    return ("realigned" if tag is not None else "aligned"), ""


def _align_task(task: tuple[str, str, dict, bool]) -> tuple[str, str]:
    return align_one(*task)


# ------------------------------------------------------------------------------------------------
# the folder
# ------------------------------------------------------------------------------------------------
def _write_list(path: Path, lines: list[str]) -> None:
    from e4e.fileio import atomic_write

    def write(f):
        f.write("".join(line + "\n" for line in lines))
        os.fchmod(f.fileno(), _file_mode())

    if lines:
        atomic_write(path, write, mode="w")
    else:
        path.unlink(missing_ok=True)


def _results(tasks, jobs: int, settings: dict):
    """Yield (input path, (status, detail)) as images finish."""
    if jobs <= 1:
        for t in tasks:
            yield t[0], align_one(*t)
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                  initializer=_init_worker, initargs=(settings,))
    try:
        futures = {pool.submit(_align_task, t): t[0] for t in tasks}
        for fut in cf.as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except cf.process.BrokenProcessPool:
                yield futures[fut], ("failed", "its worker process died (out of memory? try fewer --jobs)")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@guarded(BadInput)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    transform = args.transform_size or min(4 * args.size, MAX_TRANSFORM)
    if transform < args.size:
        raise BadInput(f"--transform-size {transform} is smaller than --size {args.size}")
    src, out, paths = check_inputs(args.in_dir, args.out_dir)
    from e4e.align import dlib_model_file
    from e4e.extras import require_extra

    require_extra("dlib", "faces", "e4e-align (FFHQ alignment with dlib)")
    dlib_model_file("shape_predictor_68_face_landmarks.dat")
    out.mkdir(parents=True, exist_ok=True)

    settings = {"size": args.size, "transform_size": transform, "padding": not args.no_padding,
                "upsample": args.upsample}
    names = output_names(paths)
    tasks = [(str(p), str(out / names[p]), settings, args.overwrite) for p in paths]
    jobs = min(args.jobs, len(tasks))
    print(f"e4e-align: {len(paths)} image(s) in {src} -> {out} ({args.size}x{args.size} PNG, {jobs} process(es))",
          flush=True)

    from e4e.progress import Progress

    by_status: dict[str, list[tuple[str, str]]] = {}
    interrupted = False
    results = _results(tasks, jobs, settings)
    with Progress(len(tasks), "align", unit="img") as bar:
        def note(msg: str) -> None:  # per-image problems are printed in every progress mode
            if bar.mode == "bar":
                bar.write(msg)
            else:
                print(msg, file=sys.stderr, flush=True)

        try:
            for path, (status, detail) in results:
                name = Path(path).name
                by_status.setdefault(status, []).append((name, detail))
                if status == "no_face":
                    note(f"no face: {name}")
                elif status in ("unreadable", "failed"):
                    note(f"{status}: {name}: {detail}")
                elif status == "kept":
                    note(f"kept: {detail}")
                bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            results.close()  # shuts the worker pool down

    def listed(status):
        return sorted(by_status.get(status, []))

    no_face, unreadable = listed("no_face"), listed("unreadable") + listed("failed")
    if not interrupted:  # a partial run would drop the earlier run's entries
        _write_list(out / NO_FACE_LIST, [n for n, _ in no_face])
        _write_list(out / UNREADABLE_LIST, [f"{n}: {d}" for n, d in sorted(unreadable)])
    counts = {k: len(v) for k, v in by_status.items()}
    parts = [f"{counts.get('aligned', 0) + counts.get('realigned', 0)} aligned"]
    if counts.get("realigned"):
        parts[0] += f" ({counts['realigned']} replacing an earlier output)"
    if counts.get("skipped"):
        parts.append(f"{counts['skipped']} already aligned (skipped)")
    if no_face:
        parts.append(f"{len(no_face)} without a face" + ("" if interrupted else f" (listed in {out / NO_FACE_LIST})"))
    if unreadable:
        parts.append(f"{len(unreadable)} unreadable or failed" +
                     ("" if interrupted else f" (listed in {out / UNREADABLE_LIST})"))
    if counts.get("kept"):
        parts.append(f"{counts['kept']} kept: a file not written by e4e-align is in the way (--overwrite replaces it)")
    done = sum(counts.values())
    print(f"e4e-align: {done}/{len(tasks)} image(s): " + ", ".join(parts), flush=True)
    if interrupted:
        print("e4e-align: interrupted; the same command again resumes (finished images are skipped)", file=sys.stderr)
        return 130
    if unreadable or counts.get("kept") or (args.strict and no_face):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
