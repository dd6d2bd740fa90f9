"""MLflow helpers shared by the trainer and the CLIs (docs/design.md §5).

- ``tracking_uri()``: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns/mlflow.db`` (artifacts beside it,
  in ``mlruns/artifacts/<experiment>``).
- ``flatten_params``: nested dicts -> dotted keys, values stringified (MLflow param limits respected).
- ``MetricBuffer``: metrics collected in memory and written with ``log_batch`` (sqlite is slow one
  point at a time). Both trainers save the buffered rows inside each checkpoint and flush them right
  after it is written; on resume ``flush_pending`` writes those of the checkpoint's rows MLflow does not
  hold yet. A run killed between checkpoints replays exactly the unflushed steps, and one killed between
  the checkpoint write and the flush loses none: every metric step lands exactly once.
- ``system_tags()``: git sha, torch version, python, host device, and ``source_tags()``: MLflow's own
  ``mlflow.source.name`` / ``.type`` / ``.git.commit`` and ``mlflow.user`` (``create_run`` leaves them
  empty; ``mlflow.start_run`` would fill them). The trainer and the grid tag every run they create.
- ``log_dataset``: an image folder as an MLflow dataset input (``log_inputs``) with a content digest.
- ``fetch_artifact``: a ``runs:/<run_id>/<path>`` (or other artifact) URI downloaded into the cache,
  so that a checkpoint logged as an artifact loads on a machine without the run's folder.
- ``MetricBuffer.floor``: on resume, the steps the store already holds per key are not logged again.
Nothing here touches MLflow at import time.
"""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
MAX_PARAM_LEN = 6000


@contextlib.contextmanager
def using_tracking_uri(uri: str):
    """``mlflow``'s global tracking URI set to ``uri`` inside the block only. ``mlflow.set_tracking_uri``
    also exports ``MLFLOW_TRACKING_URI`` to the process environment, so a bare call would leak into
    every later command of the same process (a notebook, a test session); both are restored on exit."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)          # None: unset, as before the block
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def get_client(uri: str | None = None, must_exist: bool = False):
    """An ``MlflowClient`` for ``uri`` (default ``tracking_uri()``) after ``check_store``; creates the
    sqlite folder unless ``must_exist`` (a reader: a missing store is an error, never created)."""
    from mlflow.tracking import MlflowClient

    uri = check_store(uri or tracking_uri(), must_exist)
    db = _sqlite_path(uri)
    if db is not None and not must_exist:
        db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


STORE_TIMEOUT_S = 5.0   # a dead tracking server or a locked database fails within this, not minutes later
SQLITE_MAGIC = b"SQLite format 3\x00"


def check_store(uri: str, must_exist: bool = False) -> str:
    """``uri`` if its store can be used, else a ``ConfigError`` saying why, within seconds and before
    anything is written: an unknown scheme, a malformed URI, a sqlite path that is a folder, not a
    database, truncated or locked, an unwritable store folder, an http server that does not answer.
    ``must_exist``: a missing sqlite file or store folder is an error too (readers create nothing)."""
    from urllib.parse import urlparse

    from e4e.config import ConfigError

    scheme = urlparse(uri).scheme.split("+")[0].lower() or ("databricks" if uri == "databricks" else "")
    if scheme not in STORE_CHECKS:
        raise ConfigError(f"tracking URI {uri!r}: unknown scheme {scheme!r}; use sqlite:///path/mlflow.db, "
                          f"http(s)://host:port or a folder (known: {', '.join(sorted(filter(None, STORE_CHECKS)))})")
    problem = STORE_CHECKS[scheme](uri, must_exist)
    if problem:
        raise ConfigError(f"tracking URI {uri}: {problem}")
    return uri


def _check_sqlite(uri: str, must_exist: bool) -> str | None:
    db = _sqlite_path(uri)
    if db is None or not str(db).strip():
        return "malformed; write sqlite:///relative/path/mlflow.db or sqlite:////absolute/path/mlflow.db"
    if db.exists() and not db.is_file():
        return f"{db} is not a database file (a folder?)"
    if not db.exists():
        return f"no MLflow store at {db}" if must_exist else _folder_problem(db.parent)
    return _sqlite_problem(db)


def _sqlite_problem(db: Path) -> str | None:
    """A file that is not SQLite, one shorter than its header says (truncated), or one another process
    holds locked beyond ``STORE_TIMEOUT_S``."""
    import sqlite3

    with open(db, "rb") as f:
        head = f.read(100)
    if not head:
        return None  # an empty file: MLflow creates its tables in it
    if not head.startswith(SQLITE_MAGIC):
        return f"{db} is not an SQLite database"
    page = int.from_bytes(head[16:18], "big") or 65536
    pages = int.from_bytes(head[28:32], "big")
    if pages and db.stat().st_size < page * pages:
        return f"{db} is truncated ({db.stat().st_size} bytes, its header says {page * pages})"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=STORE_TIMEOUT_S)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        return f"{db} cannot be read ({e}); locked by another process, or damaged"
    return None


def _check_folder(uri: str, must_exist: bool) -> str | None:
    from urllib.parse import urlparse

    folder = Path(urlparse(uri).path if uri.startswith("file:") else uri)
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a store folder"
    if not folder.exists():
        return f"no MLflow store at {folder}" if must_exist else _folder_problem(folder)
    return None


def _folder_problem(folder: Path) -> str | None:
    from e4e.fileio import folder_problem

    return folder_problem(folder)


def _check_server(uri: str, must_exist: bool) -> str | None:
    import socket
    from urllib.parse import urlparse

    try:
        url = urlparse(uri)
        host, port = url.hostname, url.port or (443 if url.scheme.lower() == "https" else 80)
    except ValueError as e:
        return f"malformed ({e})"
    if not host:
        return "malformed: no host (http://host:port)"
    try:
        socket.create_connection((host, port), timeout=STORE_TIMEOUT_S).close()
    except OSError as e:
        return f"the tracking server {host}:{port} does not answer ({e.strerror or e}); start it or fix the URI"
    return None


def _unchecked(uri: str, must_exist: bool) -> None:
    return None  # database servers and managed stores: MLflow reports their errors


STORE_CHECKS = {"sqlite": _check_sqlite, "http": _check_server, "https": _check_server, "file": _check_folder,
                "": _check_folder, "postgresql": _unchecked, "mysql": _unchecked, "mssql": _unchecked,
                "databricks": _unchecked}


def artifact_root_for(uri: str, experiment: str) -> str | None:
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "artifacts" / experiment).as_uri()


def filter_literal(value: str) -> str:
    """``value`` quoted for an MLflow filter string (``tags.grid = <literal>``): single quotes, or double
    ones when it holds a single quote; a value with both cannot be searched (``ConfigError``)."""
    from e4e.config import ConfigError, short_repr

    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ConfigError(f"{short_repr(value)}: a name with both quote characters cannot be searched in MLflow")


#: the experiment tag MLflow's UI reads for an experiment's kind, and the value of a model-training
#: experiment (the UI's ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT``, labelled "Machine learning"; the
#: other values are genai_development, *_inferred, no_inferred_type, finetuning, ...). MLflow 3.18's UI
#: picks the experiment page's view from its own "workflow type" switch (the URL's ``workflowType`` query
#: parameter, else the browser's localStorage ``mlflow.workflowType_v1``, default ``genai``) and not
#: from this tag (the tag is read only with that switch turned off in the UI build): ``ui_url`` gives a
#: link that opens the training view. The tag is still set, for MLflow builds and tools that read it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
#: the UI's workflow-type query parameter and its model-training value (``WorkflowType.MACHINE_LEARNING``)
UI_WORKFLOW_PARAM, UI_WORKFLOW_TRAINING = "workflowType", "machine_learning"
DEFAULT_UI_URL = "http://127.0.0.1:5000"   # `make ui`


def get_or_create_experiment(client, name: str) -> str:
    """The experiment ``name`` (restored if deleted, created if missing), tagged as a model-training
    experiment: existing experiments without that tag (created before it was set) are fixed here."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_root_for(client.tracking_uri, name),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_TRAINING})
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND_TRAINING:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)
    return exp.experiment_id


def ui_url(experiment_id: str, run_id: str | None = None, base: str | None = None,
           store: str | None = None) -> str:
    """A link into the MLflow UI that opens the model-training view (runs table, charts) of the
    experiment, or a run's page: ``<base>/#/experiments/<id>[/runs/<run>]?workflowType=machine_learning``.
    ``base``: ``$MLFLOW_UI_URL``, else the tracking server itself when ``store`` (the tracking URI) is
    http(s) (a server serves its UI), else ``http://127.0.0.1:5000`` (``make ui``)."""
    served = store if store and store.lower().startswith(("http://", "https://")) else None
    base = (base or os.environ.get("MLFLOW_UI_URL") or served or DEFAULT_UI_URL).rstrip("/")
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/{page}?{UI_WORKFLOW_PARAM}={UI_WORKFLOW_TRAINING}"


def flatten_params(d, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Nested dict (or dataclass config) -> {dotted key: string value}."""
    import dataclasses

    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        d = dataclasses.asdict(d)
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_params(v, key + sep, sep))
        else:
            s = "" if v is None else str(v)
            out[key] = s[:MAX_PARAM_LEN]
    return out


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in flatten_params(params).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def set_tags(client, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, tags=items[i:i + 100])


def log_batch(client, run_id: str, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None, step: int = 0) -> None:
    """Metrics (all at ``step``), params and tags in as few ``log_batch`` calls as MLflow allows."""
    from mlflow.entities import Metric

    if params:
        log_params(client, run_id, params)
    if tags:
        set_tags(client, run_id, tags)
    if metrics:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[i:i + 1000])


class MetricBuffer:
    """Collects (key, value, step) metrics; ``flush`` writes them with ``log_batch`` and empties.

    ``floor``: key -> the highest step the run already holds (``logged_steps`` on resume). A row at or
    below it is not added: training resumed from a checkpoint older than the last flush replays steps
    whose rows are in the store (flushes between checkpoints), and each step is logged once."""

    def __init__(self):
        self.rows: list[tuple[str, float, int, int]] = []
        self.floor: dict[str, int] = {}
        self.flushed_at = time.monotonic()

    def add(self, key: str, value: float, step: int) -> None:
        if int(step) <= self.floor.get(key, -1):
            return
        self.rows.append((key, float(value), int(step), int(time.time() * 1000)))

    def add_dict(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.add(k, v, step)

    def __len__(self):
        return len(self.rows)

    def seconds_since_flush(self) -> float:
        return time.monotonic() - self.flushed_at

    def flush(self, client, run_id: str) -> int:
        from mlflow.entities import Metric

        n = len(self.rows)
        metrics = [Metric(k, v, ts, s) for k, v, s, ts in self.rows]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        self.rows.clear()
        self.flushed_at = time.monotonic()
        return n

    def discard(self) -> None:
        """Drop the unflushed rows (a run stopped by an error: they are replayed after resume)."""
        self.rows.clear()


def logged_steps(client, run_id: str, prefixes: tuple[str, ...] = ("train/", "val/")) -> dict[str, int]:
    """key -> the highest step the run holds, for its metrics under ``prefixes`` (a resume's
    ``MetricBuffer.floor``)."""
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(prefixes)]
    out = {}
    for k in keys:
        steps = [m.step for m in client.get_metric_history(run_id, k)]
        if steps:
            out[k] = max(steps)
    return out


def flush_pending(client, run_id: str, rows: list) -> int:
    """Write the checkpoint-saved metric rows ``(key, value, step, ts)`` that the run does not hold yet
    (the process died between writing the checkpoint and flushing); a row whose step the run holds
    (flushed before the kill) is not written again. Returns how many were written."""
    from mlflow.entities import Metric

    by_key: dict[str, list] = {}
    for k, v, s, ts in rows:
        by_key.setdefault(k, []).append((k, v, s, ts))
    todo = []
    for k, items in by_key.items():
        have = {m.step for m in client.get_metric_history(run_id, k)}
        todo += [Metric(k, float(v), int(ts), int(s)) for k, v, s, ts in items if s not in have]
    for i in range(0, len(todo), 1000):
        client.log_batch(run_id, metrics=todo[i:i + 1000])
    return len(todo)


def git_sha(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd or Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def system_tags(device, source_type: str | None = None) -> dict[str, str]:
    """``source_tags`` and the host: git sha (``-dirty`` with uncommitted changes), torch, python, device."""
    import torch

    sha = git_sha()
    return {**source_tags(source_type, sha), "git_sha": sha, "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "device_name": device_name(device)}


#: environment variables set inside a batch scheduler's job (SLURM, PBS/Torque, LSF, SGE)
JOB_ENV = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")


def source_tags(source_type: str | None = None, sha: str | None = None) -> dict[str, str]:
    """MLflow's standard run tags, which ``MlflowClient.create_run`` leaves empty (constants of
    ``mlflow.utils.mlflow_tags``): ``mlflow.source.name`` (the command: ``python -m`` module, else the
    script), ``mlflow.source.type`` (``source_type``, else ``JOB`` inside a scheduler's job and ``LOCAL``
    otherwise; the grid passes ``JOB``), ``mlflow.source.git.commit`` (HEAD; ``git_sha`` says whether
    the tree was dirty; ``sha``: one already read) and ``mlflow.user``. The trainer, the grid and
    evaluate set them on every run they create."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    if source_type is None:
        source_type = "JOB" if any(os.environ.get(v) for v in JOB_ENV) else "LOCAL"
    tags = {MLFLOW_SOURCE_NAME: source_name(), MLFLOW_SOURCE_TYPE: source_type, MLFLOW_USER: _user()}
    sha = (sha or git_sha()).removesuffix("-dirty")
    if sha != "unknown":
        tags[MLFLOW_GIT_COMMIT] = sha
    return tags


#: source tags that belong to the process that created a run: a trainer handed a grid's run keeps them
CREATOR_TAGS = frozenset({"mlflow.source.name", "mlflow.source.type", "mlflow.user"})


def source_name() -> str:
    """What started this process: ``python -m <module> ...`` -> the module, else ``sys.argv[0]``
    (relative to the repository when inside it)."""
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and not spec.name.startswith("__"):
        return spec.name.removesuffix(".__main__")
    arg = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    try:
        return str(Path(arg).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return arg


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container without a passwd entry)
        return os.environ.get("USER") or "unknown"


# -- data sets --------------------------------------------------------------------------------------
#: folders up to this size get a digest of their bytes; larger ones one of their file listing
CONTENT_DIGEST_MAX_BYTES = 512 * 2**20


def folder_digest(folder: str | Path) -> tuple[str, dict]:
    """(digest, profile) of an image folder. The digest is the sha256 (first 16 hex digits) of the
    sorted image file names with their sizes and bytes when they total at most
    ``CONTENT_DIGEST_MAX_BYTES`` (the synth set: 12k small PNGs, about a second); above that, of the
    names, sizes and modification times only (no pixels read: a copy that does not keep the times
    gets another digest, never the same one for changed files). A content digest is remembered in
    ``<cache_root>/dataset_digests`` under the listing's key, so an unchanged folder is read once.
    The profile says which digest it is and counts the files and bytes."""
    import hashlib
    import json

    from e4e.data import list_images
    from e4e.fileio import atomic_write, cache_root

    files = list_images(folder)
    stats = [(p.name, st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]]
    total = sum(size for _, size, _ in stats)
    listing = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    profile = {"num_images": len(files), "bytes": total}
    if total > CONTENT_DIGEST_MAX_BYTES:
        return listing[:16], {**profile, "digest_of": "file names, sizes and modification times"}
    profile["digest_of"] = "file names, sizes and bytes"
    memo = cache_root() / "dataset_digests" / f"{listing[:32]}.txt"
    try:
        return memo.read_text().strip(), profile
    except OSError:
        pass
    h = hashlib.sha256()
    for p, (name, size, _) in zip(files, stats):
        h.update(f"{name}\0{size}\0".encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()[:16]
    try:
        atomic_write(memo, lambda f: f.write(digest), mode="w")
    except OSError:  # a read-only cache costs the next digest
        pass
    return digest, profile


def log_dataset(client, run_id: str, folder: str | Path, context: str, name: str | None = None,
                tags: dict[str, Any] | None = None) -> str | None:
    """Record the image folder as a dataset input of the run (the UI's "Datasets used"): source its
    absolute path (a local source, as ``mlflow.data`` writes one), digest ``folder_digest``, name
    ``<parent>/<folder>`` (e.g. ``synth/train``), input tags ``mlflow.data.context`` = ``context``
    (training | validation | evaluation) and ``tags``. MLflow keeps a data set once per run (its
    first context): logged once per (name, digest) and run. Returns the digest, or None for a folder
    that does not exist."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    folder = Path(folder).resolve()
    if not folder.is_dir():
        return None
    digest, profile = folder_digest(folder)
    name = name or f"{folder.parent.name}/{folder.name}"
    for have in client.get_run(run_id).inputs.dataset_inputs:
        if have.dataset.name == name and have.dataset.digest == digest:
            return digest
    dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": str(folder)}),
                      profile=json.dumps(profile))
    input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)] + [InputTag(k, str(v)) for k, v in (tags or {}).items()]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, input_tags)])
    return digest


def dataset_folder(ds) -> Path | None:
    """The image folder behind a training / validation set (an ``ImageFolderDataset``, or a ``Subset``
    of one); None for in-memory sets."""
    while ds is not None and not hasattr(ds, "root"):
        ds = getattr(ds, "dataset", None)
    root = getattr(ds, "root", None)
    return Path(root) if root is not None else None


# -- artifacts as checkpoints -------------------------------------------------------------------------
def is_artifact_uri(path) -> bool:
    """``runs:/...``, ``mlflow-artifacts:/...``, ``s3://...``, ``file:///...``: a URI with a scheme of
    two or more letters (a Windows drive letter is a path)."""
    import re

    return isinstance(path, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", path) is not None


def run_artifact_uri(run_id: str, path: str) -> str:
    return f"runs:/{run_id}/{path.lstrip('/')}"


def checkpoint_artifact(client, run_id: str, tags: dict[str, str] | None = None) -> str | None:
    """The ``runs:/`` URI of the run's checkpoint artifact: its ``checkpoint.uri`` tag (the trainer's),
    else the artifact named like its ``checkpoint`` tag's file; None when the run logged none."""
    tags = client.get_run(run_id).data.tags if tags is None else tags
    if tags.get("checkpoint.uri", "-") != "-":
        return tags["checkpoint.uri"]
    names = {f.path for f in client.list_artifacts(run_id) if not f.is_dir}
    for key in ("checkpoint", "best_checkpoint", "final_checkpoint"):
        name = Path(tags.get(key) or "-").name
        if name in names:
            return run_artifact_uri(run_id, name)
    return None


def fetch_artifact(uri: str, tracking_uri_: str | None = None) -> Path:
    """The local copy of the artifact file ``uri`` (``runs:/<run_id>/<path>`` resolved in
    ``tracking_uri_`` or ``tracking_uri()``; any artifact-store URI), downloaded with
    ``mlflow.artifacts.download_artifacts`` into ``<cache_root>/artifacts/<key>/``. A ``runs:/`` file
    already there with the artifact's size is not downloaded again. ``models:/`` URIs are refused
    (this project registers no models). ``FileNotFoundError`` when the store does not have it."""
    import hashlib
    import tempfile
    from urllib.parse import urlparse

    from mlflow.exceptions import MlflowException

    from e4e.fileio import cache_root

    scheme = uri.split(":", 1)[0].lower()
    if scheme == "models":
        raise ValueError(f"{uri}: models:/ URIs are not supported (no model is registered); give the run's "
                         "artifact, runs:/<run_id>/inverter.pt")
    uri_store = tracking_uri_ or tracking_uri()
    key = hashlib.sha256(f"{uri_store}\n{uri}".encode()).hexdigest()[:24]
    name = urlparse(uri).path.rstrip("/").rsplit("/", 1)[-1] or "artifact"
    dest = cache_root() / "artifacts" / key / name
    if dest.is_file() and scheme == "runs" and _runs_artifact_size(uri, uri_store) == dest.stat().st_size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        try:
            got = Path(download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=uri_store))
        except (MlflowException, OSError) as e:
            msg = getattr(e, "message", None) or str(e)
            raise FileNotFoundError(f"checkpoint {uri} cannot be downloaded from {uri_store}: {msg[:300]}") from None
        if not got.is_file():
            raise FileNotFoundError(f"checkpoint {uri}: the artifact is a folder, not a checkpoint file")
        os.replace(got, dest)
    return dest


def _runs_artifact_size(uri: str, uri_store: str) -> int | None:
    """The size the store records for the ``runs:/<run_id>/<path>`` artifact (None if unknown)."""
    rest = uri.split(":/", 1)[1].lstrip("/")
    run_id, _, path = rest.partition("/")
    folder = path.rsplit("/", 1)[0] if "/" in path else None
    try:
        from mlflow.tracking import MlflowClient

        for f in MlflowClient(tracking_uri=uri_store).list_artifacts(run_id, folder):
            if f.path == path and not f.is_dir:
                return f.file_size
    except Exception:  # noqa: BLE001 - cannot ask: download again
        return None
    return None


def metric_steps(client, run_id: str, key: str) -> list[int]:
    """All logged steps of ``key`` (duplicates kept): used by tests and resume checks."""
    return [m.step for m in client.get_metric_history(run_id, key)]
