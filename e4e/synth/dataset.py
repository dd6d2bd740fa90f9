"""Builder for the synth data set: PNG folders per split plus one attributes CSV.

Layout written under ``out``::

    train/000000.png ...   test/000000.png ...   val/000000.png ...
    attributes.csv         split,filename,<one column per attribute in ATTRIBUTES order>
    meta.json              seed, counts, image size, supersampling, realism gap and the attribute table
    .synth-build.json      the marker: what this builder wrote here (``BUILD_MARKER``)

``out`` must be empty (or missing) or a folder this builder wrote: one with the marker, or one
written before the marker existed, recognised by the builder's ``meta.json`` (its seed and counts);
there the builder's own names (``meta.json``, ``attributes.csv``, ``<split>/NNNNNN.png``) count as
its files. A rebuild deletes
and replaces only the files the marker lists (a smaller set leaves none of the larger one behind);
any other file in ``out`` stops the build before anything is written (``ConfigError``), unless
``force=True``, which keeps those files and still replaces only the builder's own; a foreign file
at a path the build would write stops it even then. Nothing a user put there is ever deleted or
overwritten.

Each split draws its attributes from its own stream ``np.random.default_rng([seed, split_id])``, so
the test and val sets do not depend on ``n_train``. Rendering is a pure function of the attributes
and PNG encoding uses fixed settings, so the same arguments give the same bytes; the CSV stores the
exact float32 attributes, so ``render`` reproduces any image from its CSV row.

With ``gap`` > 0 every split holds "real" images: image i of split ``split_id`` is
``render(row, gap=gap, seeds=[(seed, split_id, i)])`` of its CSV row, where the row holds the values
actually rendered (``stretch_attributes`` may have pushed yaw/smile past their ranges). The generator
trains on clean renders (``e4e.synth.distill``), so the details are the realism gap.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import os
import re
from pathlib import Path

import numpy as np
from e4e.progress import Progress

from .render import (ATTRIBUTE_SPECS, ATTRIBUTES, BEYOND_MAX, BEYOND_RANGE, REALISM_DETAILS, render,
                     sample_attributes, stretch_attributes)

__all__ = ["SPLITS", "DEFAULT_GAP", "BUILD_MARKER", "build_dataset", "check_build_args", "plan_build_folder",
           "image_seeds", "read_attributes", "write_attributes_csv"]

SPLITS = ("train", "test", "val")  # order fixes the per-split random stream ids
#: Realism gap of ``python -m experiments.synth build`` when ``--gap`` is not given.
DEFAULT_GAP = 1.0
_PNG_OPTS = dict(format="PNG", compress_level=6)
#: The marker file ``build_dataset`` leaves in ``out``: the files it wrote there.
BUILD_MARKER = ".synth-build.json"
_TOP_FILES = ("attributes.csv", "meta.json")
_OWN_NAME = re.compile(r"(?:%s)/\d{6}\.png\Z" % "|".join(SPLITS))


def _own_files(counts: dict[str, int]) -> set[str]:
    """Relative paths (posix) a build with these split sizes writes, the marker aside."""
    return {*_TOP_FILES, *(f"{s}/{i:06d}.png" for s in SPLITS for i in range(int(counts.get(s, 0))))}


def _listing(out: Path) -> set[str]:
    """Every file (and symlink) under ``out``, as posix paths relative to it."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() or p.is_symlink()}


def _is_build_meta(path: Path) -> bool:
    """``path`` is a ``meta.json`` this builder wrote (an object with its ``seed`` and ``counts``)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "seed" in meta and isinstance(meta.get("counts"), dict)


def check_build_args(n_train: int, n_test: int, n_val: int, size: int, supersample: int, gap: float) -> None:
    """The argument ranges of a build (``ConfigError`` naming the first bad one)."""
    from e4e.config import ConfigError

    for name, n in (("n_train", n_train), ("n_test", n_test), ("n_val", n_val)):
        if n < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {n}")
    if n_train + n_test + n_val == 0:
        raise ConfigError("nothing to build: --n-train, --n-test and --n-val are all 0")
    if size < 8:
        raise ConfigError(f"--size must be >= 8 pixels, got {size}")
    if supersample < 1:
        raise ConfigError(f"--supersample must be >= 1, got {supersample}")
    if not (isinstance(gap, (int, float)) and math.isfinite(gap) and gap >= 0):
        raise ConfigError(f"--gap must be a finite number >= 0, got {gap}")


def plan_build_folder(out: str | os.PathLike, counts: dict[str, int], force: bool = False) -> set[str]:
    """Check that a build may write into ``out`` and return the files of an earlier build there
    (relative posix paths) that it may delete or replace. Raises ``ConfigError`` (nothing touched)
    when ``out`` is not a folder, or holds files the builder did not write (allowed with ``force``
    unless one sits where the build writes)."""
    from e4e.config import ConfigError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if not out.exists():
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
        if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {out}: {parent} is not writable")
        return set()
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} is not writable")
    present = _listing(out) - {BUILD_MARKER}
    marker = out / BUILD_MARKER
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
            ours = set(info["files"]) | _own_files(info["images"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--out {out}: unreadable build marker {marker} ({exc}); "
                              f"remove it if the folder is yours to rebuild") from None
    elif _is_build_meta(out / "meta.json"):   # built before the marker existed: the builder's own names
        ours = {p for p in present if p in _TOP_FILES or _OWN_NAME.match(p)}
    else:
        ours = set()
    foreign = sorted(present - ours)
    if foreign:
        new = _own_files(counts)
        clash = [p for p in foreign if p in new]
        if clash or not force:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            why = (f"would overwrite {len(clash)} of them ({', '.join(clash[:3])})" if clash and force else
                   "pass --force to build beside them (only the builder's own files are replaced)")
            raise ConfigError(f"--out {out} holds {len(foreign)} file(s) that `synth build` did not write "
                              f"({shown}); it writes only into an empty folder or one it built; {why}")
    return ours & present


def image_seeds(seed: int, split: str, start: int, stop: int) -> list[tuple[int, int, int]]:
    """Per-image realism-gap seeds of images ``start..stop-1`` of ``split`` in a data set built with ``seed``."""
    sid = SPLITS.index(split)
    return [(seed, sid, i) for i in range(start, stop)]


def _render_chunk(job):
    """Worker: render one chunk and write its PNGs. ``job`` = (folder, first index, attrs, size, ss, gap, seeds)."""
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    folder, start, attrs, size, ss, gap, seeds = job
    images = render(attrs, size=size, supersample=ss, chunk=16, gap=gap, seeds=seeds)
    for k, im in enumerate(images):
        Image.fromarray(im).save(os.path.join(folder, f"{start + k:06d}.png"), **_PNG_OPTS)
    return len(images)


def build_dataset(out: str | os.PathLike, n_train: int = 30000, n_test: int = 1000, n_val: int = 1000,
                  seed: int = 0, size: int = 64, supersample: int = 3, workers: int = 2,
                  chunk: int = 128, progress: bool = True, gap: float = 0.0, force: bool = False) -> dict:
    """Render the splits into ``out`` and write ``attributes.csv``, ``meta.json`` and the marker.

    Returns the counts per split. ``workers`` processes render in parallel (each single-threaded);
    ``workers <= 1`` renders in this process. ``gap`` is the realism gap of all splits (0: the clean
    renderer; the CLI's default is ``DEFAULT_GAP``). ``out`` is empty or the builder's own (module
    docstring; ``force``: files of others may stay beside the build)."""
    if not gap >= 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    out = Path(out)
    counts = dict(train=n_train, test=n_test, val=n_val)
    previous = plan_build_folder(out, counts, force)
    new = _own_files(counts)
    out.mkdir(parents=True, exist_ok=True)
    # the marker lists the old and the new files until the old ones are gone: a kill anywhere
    # leaves a folder whose every file of ours the marker names
    _write_marker(out, counts, previous | new)
    for stale in sorted(previous - new):
        (out / stale).unlink(missing_ok=True)
    _write_marker(out, counts, new)
    attrs = {}
    jobs = []
    for sid, split in enumerate(SPLITS):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        seeds = image_seeds(seed, split, 0, counts[split])
        clean = sample_attributes(counts[split], np.random.default_rng([seed, sid]))
        attrs[split] = stretch_attributes(clean, gap, seeds)  # the values rendered (= clean at gap 0)
        for i in range(0, counts[split], chunk):
            jobs.append((str(folder), i, attrs[split][i:i + chunk], size, supersample, gap, seeds[i:i + chunk]))

    bar = Progress(sum(counts.values()), "render synth", unit="img", disable=not progress)
    if workers <= 1:
        for job in jobs:
            bar.update(_render_chunk(job))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for n in pool.imap_unordered(_render_chunk, jobs):
                bar.update(n)
    bar.close()

    write_attributes_csv(out / "attributes.csv", attrs)
    meta = dict(seed=seed, counts=counts, size=size, supersample=supersample, gap=float(gap),
                realism_gap=_gap_meta(gap),
                attributes={k: dict(low=lo, high=hi, description=d) for k, (lo, hi, d) in ATTRIBUTE_SPECS.items()})
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return counts


def _write_marker(out: Path, counts: dict[str, int], files: set[str]) -> None:
    """``BUILD_MARKER``: the split sizes (``<split>/000000.png`` .. ) and any other file of ours."""
    from e4e.fileio import atomic_write

    images = {s: int(counts[s]) for s in SPLITS}
    extra = sorted(files - _own_files(images))
    text = json.dumps(dict(written_by="python -m experiments.synth build", images=images,
                           files=sorted({*_TOP_FILES, *extra})), indent=1) + "\n"
    atomic_write(out / BUILD_MARKER, lambda f: f.write(text), mode="w")


def _gap_meta(gap: float) -> dict:
    if gap <= 0:
        return dict(description="none: clean renders, the generator's own distribution")
    return dict(description="details the clean renderer (and the generator trained on it) never draws; "
                            "strength grows with gap (about 1 is strong); in details G = gap, m = min(G, 1)",
                details=REALISM_DETAILS,
                attribute_ranges={k: [-1 - BEYOND_MAX * gap, 1 + BEYOND_MAX * gap] for k in BEYOND_RANGE},
                reproduce="image i of split s: render(csv_row, gap=gap, seeds=[(seed, SPLITS.index(s), i)])")


def write_attributes_csv(path: str | os.PathLike, attrs: dict[str, np.ndarray]) -> None:
    """Write ``attributes.csv`` for split -> [n, K] arrays; ``%.9g`` round-trips float32 exactly,
    so ``render(read_attributes(...)[1])`` reproduces the PNGs bit for bit."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["split", "filename", *ATTRIBUTES])
        for split in SPLITS:
            for i, row in enumerate(attrs.get(split, ())):
                w.writerow([split, f"{i:06d}.png", *(f"{x:.9g}" for x in row)])


def read_attributes(root: str | os.PathLike, split: str | None = None) -> tuple[list[str], np.ndarray]:
    """Read ``attributes.csv``: (relative paths like ``train/000000.png``, float32 [n, K]).

    Only rows of ``split`` when given. Columns follow the CSV header, which must match ``ATTRIBUTES``."""
    path = Path(root) / "attributes.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; build the data set with "
                                f"`python -m experiments.synth build --out {root}`")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    if tuple(header[2:]) != ATTRIBUTES:
        raise ValueError(f"{path}: attribute columns {header[2:]} differ from the renderer's {list(ATTRIBUTES)}")
    rows = [r for r in rows if split is None or r[0] == split]
    files = [f"{r[0]}/{r[1]}" for r in rows]
    values = np.array([[float(x) for x in r[2:]] for r in rows], np.float32).reshape(len(rows), len(ATTRIBUTES))
    return files, values
