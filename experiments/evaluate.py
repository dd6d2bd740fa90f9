"""Evaluate an inverter with the registered metrics (``metrics.registry``) and log them to MLflow.

    python -m experiments.evaluate --checkpoint runs/synth/e4e/best_inverter.pt --data data/synth/test \\
        --metrics l2,msssim,swd,latent_dist_w,lec_smile_3
    python -m experiments.evaluate --run <mlflow run id> --data data/synth/test --metrics l2,lpips_alex

``--run`` loads the checkpoint named by the run's ``checkpoint`` tag and logs into that run (a file
not on this machine: the run's checkpoint artifact); ``--checkpoint`` alone logs into a new run of the
domain's experiment (``--no-mlflow``: print only). A checkpoint may be an artifact URI,
``--checkpoint runs:/<run_id>/best_inverter.pt`` (the trainer logs ``inverter.pt`` and
``best_inverter.pt``): downloaded from ``--tracking-uri``'s store into the cache and loaded safely.
Metrics are logged with ``log_batch`` as ``<prefix><name>`` (default prefix ``test/``, as the grid);
per-image values go to the artifact ``eval/per_image.csv`` and all values to ``eval/metrics.json``.
A run's ``test/*`` hold one image count (its tag ``eval.n_images``): an evaluation of the same run on
another count goes to ``test_n<N>/*`` and ``eval_n<N>/`` instead (``log_evaluation``, shared with the
grid's ``--reevaluate``), so ``test/*`` are never overwritten by numbers on other images.
A metric that cannot be computed here (missing weights, no direction, no face) is recorded as the tag
``unavailable.<metric>`` with the reason and never as a number.

Library use (the grid runner calls this):
    values, per_image, unavailable = evaluate(inverter, images, ["l2", "swd"], batch_size=8)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Iterable

from e4e.cli import (Parser, add_allow_pickle_flag, add_device_flag, add_tracking_flag, allow_pickle, check_out_dir,
                     comma_list, guarded, positive_int)
from e4e.config import parse_dotlist

DEFAULT_PREFIX = "test/"


# =============================================================================================
# library
# =============================================================================================
def evaluate(inverter, images, metric_names: Iterable[str], ctx_kwargs: dict | None = None,
             **kwargs) -> tuple[dict[str, float], dict[str, list[float]], dict[str, str]]:
    """Run ``metric_names`` on ``images`` ([N,3,H,W] in [-1,1] or an iterable of batches).

    ``ctx_kwargs`` and keyword arguments that are ``EvalContext`` fields (batch_size, device, domain,
    directions, data_path, seed, progress) configure the context; any other keyword is a metric
    option (``ctx.options``: edit_strength, swd_seed, latent_n_ref, ...). Images are inverted once.
    Returns (values, per_image, unavailable: metric -> reason)."""
    from metrics.registry import EvalContext, MetricUnavailable, get_metric

    ctx_fields = {f.name for f in fields(EvalContext)} - {"inverter", "images", "cache"}
    merged = {**(ctx_kwargs or {}), **kwargs}
    ctx_args = {k: v for k, v in merged.items() if k in ctx_fields}
    options = {**ctx_args.pop("options", {}), **{k: v for k, v in merged.items() if k not in ctx_fields}}
    if ctx_args.get("device") is None:
        ctx_args["device"] = _inverter_device(inverter)
    ctx = EvalContext(inverter, images, options=options, **ctx_args)
    names = list(dict.fromkeys(n.strip() for n in metric_names if n and n.strip()))
    fns = {n: get_metric(n) for n in names}  # unknown names fail before any work
    values: dict[str, float] = {}
    per_image: dict[str, list[float]] = {}
    unavailable: dict[str, str] = {}
    for name in ctx._progress(names, "metrics", len(names)):
        try:
            res = fns[name](ctx)
        except MetricUnavailable as exc:
            unavailable[name] = exc.reason
            continue
        values.update({k: float(v) for k, v in res.values.items()})
        per_image.update(res.per_image or {})
    return values, per_image, unavailable


def _inverter_device(inverter):
    import torch

    p = next(iter(inverter.parameters()), None) if hasattr(inverter, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


# =============================================================================================
# images
# =============================================================================================
def load_images(folder: str | Path, domain: str = "synth", n: int | None = None, size=None):
    """The first ``n`` images of ``folder`` (sorted) with the domain's test transform
    (``e4e.data.ImageFolderDataset``: resized to the domain's encoder input, e.g. 256x256 faces,
    192x256 cars, 64x64 synth) or to ``size`` when given. [N,3,H,W] in [-1, 1]."""
    import torch
    from e4e.data import ImageFolderDataset

    ds = ImageFolderDataset(folder, size=size, domain=None if size else domain)
    count = min(len(ds), n) if n else len(ds)
    return torch.stack([ds[i] for i in range(count)]).float()


def default_data_dir(domain: str, split: str = "test") -> Path:
    """``$E4E_DATA/<domain>/<split>`` (default root ``data``), where ``experiments.synth build`` writes."""
    import os

    return Path(os.environ.get("E4E_DATA", "data")) / domain / split


def load_test_images(domain: str, n: int | None = None, split: str = "test"):
    """The domain's ``<split>`` images from ``default_data_dir`` (the grid evaluates on these)."""
    from e4e.data import get_domain

    get_domain(domain)  # unknown domain -> KeyError listing the known ones
    folder = default_data_dir(domain, split)
    if not folder.is_dir():
        raise FileNotFoundError(f"no {split} images for domain {domain!r}: {folder} does not exist "
                                f"(synth: python -m experiments.synth build --out {folder.parent})")
    return load_images(folder, domain, n)


# =============================================================================================
# MLflow
# =============================================================================================
def log_results(client, run_id: str, values: dict, per_image: dict, unavailable: dict, prefix: str = DEFAULT_PREFIX,
                extra: dict | None = None, artifact_path: str = "eval") -> None:
    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    metrics = [Metric(k, v, ts, 0) for k, v in new_values(client, run_id, {prefix + k: v for k, v in values.items()})]
    tags = [RunTag(f"unavailable.{k}", str(v)[:4000]) for k, v in unavailable.items()]
    for i in range(0, max(len(metrics), 1), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000], tags=tags if i == 0 else [])
    with tempfile.TemporaryDirectory() as tmp:
        values, per_image, unavailable, extra = merge_with_logged(client, run_id, artifact_path, Path(tmp) / "old",
                                                                  values, per_image, unavailable, extra)
        write_outputs(Path(tmp) / "new", values, per_image, unavailable, extra)
        client.log_artifacts(run_id, str(Path(tmp) / "new"), artifact_path)


N_IMAGES_TAG = "eval.n_images"


def logged_n_images(client, run_id: str) -> str | None:
    """The image count the run's ``test/*`` were computed on: its ``eval.n_images`` tag, else the
    ``n_images`` of its ``eval/metrics.json`` (runs evaluated before the tag existed), else None."""
    from mlflow.exceptions import MlflowException

    n = client.get_run(run_id).data.tags.get(N_IMAGES_TAG)
    if n is not None:
        return n
    with tempfile.TemporaryDirectory() as tmp:
        try:
            old = json.loads(Path(client.download_artifacts(run_id, "eval/metrics.json", tmp)).read_text())
        except (MlflowException, OSError, ValueError):
            return None
    return None if old.get("n_images") is None else str(old["n_images"])


def result_paths(logged_n: str | None, n_images: int, prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """(metric prefix, artifact folder) of an evaluation on ``n_images`` in a run whose ``test/*`` hold
    ``logged_n`` images: ``test/`` and ``eval`` for the same count or a first evaluation, else
    ``test_n<N>/`` and ``eval_n<N>``. A prefix other than ``test/`` is the caller's choice, kept."""
    if prefix != DEFAULT_PREFIX or logged_n in (None, str(n_images)):
        return prefix, "eval"
    return f"test_n{n_images}/", f"eval_n{n_images}"


def log_evaluation(client, run_id: str, values: dict, per_image: dict, unavailable: dict, n_images: int,
                   extra: dict | None = None, prefix: str = DEFAULT_PREFIX) -> str:
    """Log an evaluation on ``n_images`` into ``run_id`` where ``result_paths`` says and tag the
    count: ``eval.n_images`` for ``test/*``, ``eval.test_n<N> = true`` for a count kept apart.
    Returns the metric prefix used."""
    prefix, folder = result_paths(logged_n_images(client, run_id), n_images, prefix)
    log_results(client, run_id, values, per_image, unavailable, prefix=prefix,
                extra={**(extra or {}), "n_images": n_images}, artifact_path=folder)
    if prefix == DEFAULT_PREFIX:
        client.set_tag(run_id, N_IMAGES_TAG, str(n_images))
    elif folder != "eval":
        client.set_tag(run_id, f"eval.{prefix.rstrip('/')}", "true")
    return prefix


def merge_with_logged(client, run_id: str, artifact_path: str, tmp: Path, values: dict, per_image: dict,
                      unavailable: dict, extra: dict | None):
    """This evaluation's results over the ones already in the run's ``<artifact_path>/`` files: a
    re-evaluation of some metrics (``--eval metrics=[...]``) replaces those and keeps the rest, so no
    earlier value or per-image list is lost."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    missing = (MlflowException, OSError, ValueError)  # not logged yet, or unreadable: nothing to keep
    try:
        old = json.loads(Path(client.download_artifacts(run_id, f"{artifact_path}/metrics.json", str(tmp))).read_text())
    except missing:
        return values, per_image, unavailable, extra
    try:
        frame = pd.read_csv(client.download_artifacts(run_id, f"{artifact_path}/per_image.csv", str(tmp)))
        old_per_image = {c: frame[c].tolist() for c in frame.columns if c != "image"}
    except missing:
        old_per_image = {}
    done = set(values) | set(unavailable)
    merged_values = {**{k: v for k, v in (old.get("values") or {}).items() if k not in done}, **values}
    merged_unavailable = {**{k: v for k, v in (old.get("unavailable") or {}).items() if k not in done}, **unavailable}
    keep = {k: v for k, v in old.items() if k not in ("values", "unavailable")}
    return merged_values, {**old_per_image, **per_image}, merged_unavailable, {**keep, **(extra or {})}


def new_values(client, run_id: str, values: dict) -> list[tuple[str, float]]:
    """The finite ``values`` that the run does not already hold with exactly that value: logging an
    evaluation again after a kill part-way through it (same seeds, same values) adds no second
    entry to any metric's history, while a re-evaluation that changes a value records it."""
    have = client.get_run(run_id).data.metrics
    out = []
    for k, v in values.items():
        v = float(v)
        if math.isfinite(v) and have.get(k) != v:
            out.append((k, v))
    return out


def write_outputs(out: Path, values: dict, per_image: dict, unavailable: dict, extra: dict | None = None) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"values": values, "unavailable": unavailable, **(extra or {})},
                                                 indent=1, default=str))
    n = max((len(v) for v in per_image.values()), default=0)
    frame = pd.DataFrame({k: list(v) + [float("nan")] * (n - len(v)) for k, v in per_image.items()})
    frame.to_csv(out / "per_image.csv", index_label="image")


def format_table(values: dict, unavailable: dict) -> str:
    rows = [(k, f"{v:.6g}") for k, v in sorted(values.items())] + \
           [(k, f"unavailable: {r.splitlines()[0][:100]}") for k, r in sorted(unavailable.items())]
    width = max([len("metric")] + [len(k) for k, _ in rows])
    return "\n".join([f"{'metric':<{width}}  value", f"{'-' * width}  -----"] + [f"{k:<{width}}  {v}" for k, v in rows])


# =============================================================================================
# CLI
# =============================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="inverter checkpoint (official e4e / pSp / ReStyle or this project's): a "
                     "file, or a run's artifact runs:/<run_id>/best_inverter.pt (downloaded from --tracking-uri)")
    src.add_argument("--run", help="MLflow run id: its 'checkpoint' tag is evaluated and metrics are logged to it")
    p.add_argument("--data", required=True, help="folder of (aligned) test images")
    p.add_argument("--metrics", type=comma_list, default="l2,msssim,swd",
                   help="comma-separated metric names (default: %(default)s); --list shows them")
    p.add_argument("--domain", default="synth", help="domain (directions, transforms; default: %(default)s)")
    p.add_argument("--size", type=positive_int, nargs="+", default=None, metavar="PX",
                   help="resize images to PX (or H W) instead of the domain's encoder input size")
    p.add_argument("--n-images", type=positive_int, default=None, help="evaluate the first N images (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per batch (default: %(default)s)")
    add_device_flag(p)
    p.add_argument("--seed", type=int, default=0, help="seed of SWD / reference samples (default: %(default)s)")
    p.add_argument("--direction", action="append", default=[], metavar="NAME=FILE",
                   help="editing direction file for lec_<NAME>_* / edit_<NAME> (repeatable)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="metric option, e.g. edit_strength=3 latent_n_ref=10000 (repeatable)")
    add_tracking_flag(p)
    p.add_argument("--experiment", default=None, help="experiment for a new run with --checkpoint (default: the domain)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="metric key prefix (default: %(default)s)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log anything to MLflow")
    p.add_argument("--out", default=None, help="also write metrics.json / per_image.csv into this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list the metric names and exit")
    add_allow_pickle_flag(p)
    return p


def _checkpoint_of_run(client, run_id: str) -> str:
    """The checkpoint the run's ``checkpoint`` tag names (else ``best_checkpoint``, ``final_checkpoint``)
    where that file exists here, else the run's checkpoint artifact (``runs:/<run_id>/best_inverter.pt``:
    a run trained on another machine)."""
    from e4e.tracking import checkpoint_artifact, is_artifact_uri

    tags = client.get_run(run_id).data.tags
    named = [tags[k] for k in ("checkpoint", "best_checkpoint", "final_checkpoint") if tags.get(k, "-") != "-"]
    for ckpt in named:
        if is_artifact_uri(ckpt) or Path(ckpt).is_file():
            return ckpt
    uri = checkpoint_artifact(client, run_id, tags)
    if uri:
        return uri
    if named:
        raise LookupError(f"run {run_id}: its checkpoint {named[0]} is not on this machine and the run logged no "
                          "checkpoint artifact; pass --checkpoint")
    raise LookupError(f"run {run_id} has no 'checkpoint' tag; pass --checkpoint")


@guarded(ValueError, LookupError)
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--list" in argv:
        from metrics.registry import describe_metrics

        for name, doc in describe_metrics():
            print(f"{name:<40} {doc}")
        return 0
    args = build_parser().parse_args(argv)
    direction_files = parse_dotlist(args.direction)  # bad key=value items stop here, before any loading
    options = parse_dotlist(args.option)
    import torch

    from e4e import editing, tracking
    from e4e.checkpoints import load_inverter

    from e4e.cli import resolve_device

    args.device = resolve_device(args.device)  # device, output folder and store checked before any work
    if args.out:
        check_out_dir(args.out)
    # a run, or a checkpoint artifact, is read from an existing store, never from a new one
    must_exist = args.run is not None or tracking.is_artifact_uri(args.checkpoint)
    client = None if args.no_mlflow else tracking.get_client(args.tracking_uri, must_exist)
    ckpt = args.checkpoint or _checkpoint_of_run(client or tracking.get_client(args.tracking_uri, must_exist), args.run)
    local = tracking.fetch_artifact(ckpt, tracking.check_store(args.tracking_uri, True)) \
        if tracking.is_artifact_uri(ckpt) else ckpt
    inverter = load_inverter(local, device=args.device, allow_pickle=allow_pickle(args)).eval()
    size = None if not args.size else (args.size[0] if len(args.size) == 1 else tuple(args.size[:2]))
    images = load_images(args.data, args.domain, args.n_images, size=size)
    directions = {k: editing.load_direction(str(v)) for k, v in direction_files.items()}
    names = args.metrics
    t0 = time.perf_counter()
    with torch.no_grad():
        values, per_image, unavailable = evaluate(
            inverter, images, names, batch_size=args.batch_size, device=args.device, domain=args.domain,
            directions=directions, data_path=str(Path(args.data).resolve()), seed=args.seed,
            progress=not args.no_progress, **options)
    extra = {"checkpoint": str(ckpt), "data": str(args.data), "n_images": int(images.shape[0]),
             "metrics": names, "seconds": round(time.perf_counter() - t0, 2)}
    print(format_table(values, unavailable))
    if args.out:
        write_outputs(Path(args.out), values, per_image, unavailable, extra)
    if client is not None:
        run_id = args.run
        if run_id is None:
            exp_id = tracking.get_or_create_experiment(client, args.experiment or args.domain)
            run_id = client.create_run(exp_id, run_name="evaluate",
                                       tags={"checkpoint": str(ckpt), **tracking.source_tags()}).info.run_id
        prefix = log_evaluation(client, run_id, values, per_image, unavailable, int(images.shape[0]), extra,
                                args.prefix)
        tracking.log_dataset(client, run_id, args.data, "evaluation", tags={"n_images": int(images.shape[0])})
        if args.run is None:
            client.set_terminated(run_id)
        kept = "" if prefix == args.prefix else (f" as {prefix}* (its {args.prefix}* hold another number of "
                                                 f"images: {logged_n_images(client, run_id)})")
        print(f"logged to MLflow run {run_id}{kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
