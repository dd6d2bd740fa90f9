"""MLflow helpers shared by the trainer and the CLIs (docs/design.md §5).

- ``tracking_uri()``: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns/mlflow.db`` (artifacts beside it,
  in ``mlruns/artifacts/<experiment>``).
- ``flatten_params``: nested dicts -> dotted keys, values stringified (MLflow param limits respected).
- ``MetricBuffer``: metrics collected in memory and written with ``log_batch`` (sqlite is slow one
  point at a time). Both trainers save the buffered rows inside each checkpoint and flush them right
  after it is written; on resume ``flush_pending`` writes those of the checkpoint's rows MLflow does not
  hold yet. A run killed between checkpoints replays exactly the unflushed steps, and one killed between
  the checkpoint write and the flush loses none: every metric step lands exactly once.
- ``system_tags()``: git sha, torch version, python, host device.
Nothing here touches MLflow at import time.
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
MAX_PARAM_LEN = 6000


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


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def get_or_create_experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        # a model-training experiment: the MLflow UI opens its runs table, not the GenAI pages
        return client.create_experiment(name, artifact_location=artifact_root_for(client.tracking_uri, name),
                                        tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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
    """Collects (key, value, step) metrics; ``flush`` writes them with ``log_batch`` and empties."""

    def __init__(self):
        self.rows: list[tuple[str, float, int, int]] = []

    def add(self, key: str, value: float, step: int) -> None:
        self.rows.append((key, float(value), int(step), int(time.time() * 1000)))

    def add_dict(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.add(k, v, step)

    def __len__(self):
        return len(self.rows)

    def flush(self, client, run_id: str) -> int:
        from mlflow.entities import Metric

        n = len(self.rows)
        metrics = [Metric(k, v, ts, s) for k, v, s, ts in self.rows]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        self.rows.clear()
        return n

    def discard(self) -> None:
        """Drop the unflushed rows (a run stopped by an error: they are replayed after resume)."""
        self.rows.clear()


def flush_pending(client, run_id: str, rows: list) -> int:
    """Write the checkpoint-saved metric rows ``(key, value, step, ts)`` that the run does not hold yet
    (the process died between writing the checkpoint and flushing); returns how many were written."""
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


def system_tags(device) -> dict[str, str]:
    import torch

    return {"git_sha": git_sha(), "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "device_name": device_name(device)}


def metric_steps(client, run_id: str, key: str) -> list[int]:
    """All logged steps of ``key`` (duplicates kept): used by tests and resume checks."""
    return [m.step for m in client.get_metric_history(run_id, key)]
