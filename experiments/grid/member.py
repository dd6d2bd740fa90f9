"""One member, in the worker (this process, a spawned process or a submitit job): train (or build)
its inverter under the run-directory lock, evaluate it and log everything into its MLflow run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

from e4e.inverters import OPTIM_METHODS, TRAINED_METHODS

from experiments.grid.spec import GridError, GridSpec, STAGE_TAG, SWITCH_WORDS, TEST_PREFIX, resolve_config
from experiments.grid.plan import MemberResult, MemberTask, _client

# ================================================================================================
# one member (runs in the worker: this process, a spawned process, or a submitit job)
# ================================================================================================
def run_member(task: MemberTask) -> MemberResult:
    """Train (or build) the member's inverter, evaluate it, log everything into ``task.run_id``.

    Never raises for a member failure: the run is marked FAILED with the error as a tag and the
    result says so. KeyboardInterrupt marks it KILLED and propagates.
    """
    t0 = time.perf_counter()
    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    from e4e.fileio import DirLock, LockedError

    lock = DirLock(task.out_dir)
    try:
        lock.acquire()
    except LockedError as exc:   # another grid started it after this one planned: leave its run alone
        return MemberResult(task.member.name, "BUSY", task.run_id, str(exc), None, {}, time.perf_counter() - t0)
    try:
        return _run_member(task, t0)
    finally:
        lock.release()


def _run_member(task: MemberTask, t0: float) -> MemberResult:
    client = _client(task.tracking_uri)
    run_id = task.run_id
    try:
        client.set_tag(run_id, STAGE_TAG, "train")
        for k in ("error", "error.type", "error.traceback"):
            with contextlib.suppress(Exception):
                client.delete_tag(run_id, k)
        if task.error:
            raise GridError(task.error)
        stage = METHOD_STAGES.get(task.member.method)
        if stage is None:
            raise GridError(f"unknown method {task.member.method!r}; known: {sorted(METHOD_STAGES)}")
        inverter, checkpoint = stage(task)
        if checkpoint:
            client.set_tag(run_id, "checkpoint", str(checkpoint))
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, STAGE_TAG, "evaluate")
        metrics = evaluate_member(task, inverter, client)
        client.set_tag(run_id, STAGE_TAG, "done")
        client.set_terminated(run_id, "FINISHED")
        return MemberResult(task.member.name, "FINISHED", run_id, None, checkpoint, metrics, time.perf_counter() - t0)
    except KeyboardInterrupt:
        _mark_failed(client, run_id, "interrupted", "KeyboardInterrupt", "", status="KILLED")
        raise
    except Exception as exc:  # noqa: BLE001 - report and go on with the grid
        msg = f"{type(exc).__name__}: {exc}"
        _mark_failed(client, run_id, msg, type(exc).__name__, traceback.format_exc())
        return MemberResult(task.member.name, "FAILED", run_id, msg, None, {}, time.perf_counter() - t0)


def _mark_failed(client, run_id: str | None, msg: str, etype: str, tb: str, status: str = "FAILED") -> None:
    if not run_id:
        return
    with contextlib.suppress(Exception):
        client.set_tag(run_id, "error", msg[:4000])
        client.set_tag(run_id, "error.type", etype)
        if tb:
            client.set_tag(run_id, "error.traceback", tb[-4000:])
        client.set_terminated(run_id, status)


def _task_config(task: MemberTask):
    grid = GridSpec(task.grid, task.domain, task.profile, "", None, [task.member], task.evaluate)
    return resolve_config(grid, task.member, Path(task.out_dir))


def _train_stage(task: MemberTask):
    """Encoders: the one trainer (resumes from ``out_dir`` into ``task.run_id``)."""
    from e4e.checkpoints import load_inverter
    from e4e.train import train

    cfg = _task_config(task)
    summary = train(cfg, run_id=task.run_id, tracking_uri=task.tracking_uri)
    bad = {k: v for k, v in (summary.get("final_losses") or {}).items()
           if isinstance(v, (int, float)) and not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"non-finite training loss at step {summary.get('step')}: {bad}")
    ckpt = _summary_checkpoint(summary, task)
    return load_inverter(ckpt), str(ckpt)


def _optim_stage(task: MemberTask):
    """Optimisation baselines: nothing to train; the inverter optimises at evaluation time."""
    from baselines import optim

    from e4e.tracking import fetch_artifact, is_artifact_uri

    cfg = _task_config(task)
    _log_params(task, cfg)
    encoder = next(iter(task.dependencies.values()), None)
    # a dependency trained elsewhere (its folder gone): its checkpoint artifact, from the grid's store
    local = str(fetch_artifact(encoder, task.tracking_uri)) if is_artifact_uri(encoder) else encoder
    return optim.build_inverter(task.member.method, cfg, encoder_checkpoint=local), encoder


METHOD_STAGES: dict[str, Callable[[MemberTask], tuple[Any, str | None]]] = {
    **{m: _train_stage for m in TRAINED_METHODS},
    **{m: _optim_stage for m in OPTIM_METHODS},
}


def _summary_checkpoint(summary: Any, task: MemberTask) -> Path:
    ckpt = None
    if isinstance(summary, Mapping):
        ckpt = summary.get("checkpoint") or summary.get("final_checkpoint") or summary.get("best_checkpoint")
    ckpt = Path(ckpt) if ckpt else None
    if ckpt is None or not ckpt.exists():
        cands = [Path(task.out_dir) / n for n in ("best_inverter.pt", "inverter.pt", "final.pt", "best.pt", "last.pt")]
        ckpt = next((c for c in cands if c.exists()), None)
    if ckpt is None:
        raise FileNotFoundError(f"the trainer returned no checkpoint for {task.member.name} (out_dir {task.out_dir})")
    return ckpt


def _log_params(task: MemberTask, cfg) -> None:
    from e4e import tracking

    client = _client(task.tracking_uri)
    existing = client.get_run(task.run_id).data.params
    params = tracking.flatten_params(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg))
    # nothing is trained: the encoder-training switches do not apply (tagged n/a), so they are not logged
    params = {k: v for k, v in params.items() if k.split(".")[0] not in SWITCH_WORDS}
    tracking.log_params(client, task.run_id, {k: v for k, v in params.items() if k not in existing})


# ================================================================================================
# evaluation of one member
# ================================================================================================
def evaluate_member(task: MemberTask, inverter, client) -> dict[str, float]:
    """Evaluate on the domain's test set and log ``test/*``, ``unavailable.*`` and the artifacts."""
    import torch
    from experiments import evaluate as E

    from e4e.tracking import log_dataset

    spec = task.evaluate
    n = spec.get("n_images")
    images = (E.load_images(spec["data"], task.domain, n) if spec.get("data")
              else E.load_test_images(task.domain, n))
    log_dataset(client, task.run_id, spec.get("data") or E.default_data_dir(task.domain), "evaluation",
                tags={"n_images": len(images)})
    inverter.eval()
    values, per_image, unavailable = E.evaluate(inverter, images, list(spec.get("metrics") or []),
                                                batch_size=spec.get("batch_size", 8), domain=task.domain,
                                                **(spec.get("options") or {}))
    if values and not any(math.isfinite(v) for v in values.values()):
        raise FloatingPointError(f"every evaluation metric is non-finite: {values}")
    # a re-evaluation on another number of images is kept apart: its own prefix, the test/* values stay
    prefix = E.log_evaluation(client, task.run_id, values, per_image, unavailable, len(images), {"spec": spec},
                              prefix=TEST_PREFIX)
    if prefix != TEST_PREFIX:
        print(f"  {task.member.name}: evaluated on {len(images)} images, the run's test/* hold "
              f"{E.logged_n_images(client, task.run_id)}: logged as {prefix}*", flush=True)
        return values
    from mlflow.entities import Metric

    from experiments.report import summary_metrics

    ts = int(time.time() * 1000)
    client.log_batch(task.run_id, metrics=[Metric(k, v, ts, 0) for k, v in E.new_values(client, task.run_id,
                                                                                        summary_metrics(values))])
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        if _qualitative(task, inverter, images, Path(tmp)):
            client.log_artifacts(task.run_id, tmp, "eval")
    return values


def _qualitative(task: MemberTask, inverter, images, out: Path) -> bool:
    """inputs | inversions | the same edits for every member -> ``qualitative.npz`` and ``.png``."""
    import numpy as np

    from e4e import editing
    from e4e.fileio import to_uint8_hwc

    spec = task.evaluate.get("qualitative") or {}
    k = int(spec.get("n_images", 4))
    if k <= 0:
        return False
    from metrics.registry import resize_like

    x = images[:k]
    codes = inverter.invert(x)
    show = lambda y: to_uint8_hwc(resize_like(y, tuple(x.shape[-2:])))  # noqa: E731 - as the metrics see them
    arrays = {"inputs": to_uint8_hwc(x), "inversions": show(inverter.generate(codes))}
    for edit in spec.get("edits") or []:
        try:
            direction, label = edit_direction(task.domain, edit)
        except (FileNotFoundError, ValueError) as exc:   # no such direction here: say so, go on
            _client(task.tracking_uri).set_tag(task.run_id, f"unavailable.qualitative.{edit.get('direction')}",
                                               str(exc)[:4000])
            continue
        s = float(edit.get("strength", 3.0))
        arrays[f"edit:{label}{s:+g}"] = show(inverter.generate(editing.apply_edit(codes, direction, s)))
    np.savez_compressed(out / "qualitative.npz", **arrays)
    from PIL import Image

    rows = [np.concatenate(list(a), axis=1) for a in arrays.values()]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "qualitative.png")
    return True


def edit_direction(domain: str, edit: Mapping[str, Any]) -> tuple[Any, str]:
    """An edit of a grid file -> (direction for ``e4e.editing.apply_edit``, label). ``direction``
    names a file of the domain (InterFaceGAN / SeFa tensor, or a GANSpace PCA with ``index``,
    ``start``, ``end``)."""
    from e4e import editing

    name = edit["direction"]
    d = editing.load_direction(domain, name)
    if isinstance(d, dict):   # GANSpace PCA: one component on a range of rows
        if "index" not in edit:
            raise GridError(f"edit {dict(edit)}: {name!r} is a GANSpace PCA; give index (and start/end rows)")
        spec = {"pca": d, "index": int(edit["index"]), "start": int(edit.get("start", 0))}
        if "end" in edit:
            spec["end"] = int(edit["end"])
        return spec, edit.get("label", f"{name}{edit['index']}")
    return d, edit.get("label", name)
