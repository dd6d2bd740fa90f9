"""An MLflow tracking server for many hosts (a cluster's jobs, several machines): PostgreSQL as the
backend store, the artifacts stored by the server itself (clients upload and download through it), all
of it in one folder. docs/tracking.md says when to use it instead of the sqlite store.

    python -m experiments.server start            # or: make server
    export MLFLOW_TRACKING_URI=$(python -m experiments.server url)
    python -m experiments.server status
    python -m experiments.server stop             # or: make server-stop

The folder (--dir; default server/ in the working directory, or $E4E_SERVER_DIR):
  pgdata/         the PostgreSQL cluster, created by initdb on the first start; its log is pgdata/postgres.log
  pgpass          the database password (a libpq password file, mode 600, generated on the first start)
  artifacts/      the artifact store (mlflow server --serve-artifacts --artifacts-destination)
  mlflow.log      the tracking server's log; mlflow.pid its process; server.json its address and ports

PostgreSQL listens on 127.0.0.1 only, on a free port chosen on the first start (kept in server.json),
with password authentication (scram-sha-256) and no unix socket; only the tracking server talks to it,
as the database user e4e, database mlflow. The tracking server listens on --host/--port.

PostgreSQL refuses to run as root. Run as root (a container, CI), initdb and postgres run as an
unprivileged user: --pg-user, else $E4E_PG_USER, else `postgres` (the account Debian's postgresql
package creates), else `nobody`. The data folder is owned by that user, so --dir must be a folder that
user can reach (every folder above it searchable: not under /root or a 0700 temporary folder). The
tracking server itself runs as the calling user. Run as anyone else, everything runs as that user.

The PostgreSQL server binaries (initdb, pg_ctl, postgres) are looked up in $E4E_PG_BIN, then
/usr/lib/postgresql/<newest>/bin (Debian), then PATH. Missing: apt-get install postgresql (`make server`
installs it when run as root). The database driver is the [server] extra (psycopg2-binary).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from e4e.cli import HelpFormatter, Parser, guarded, positive_int

DEFAULT_DIR = "server"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_WORKERS = 2
DEFAULT_TIMEOUT_S = 180.0
DB_USER, DB_NAME = "e4e", "mlflow"
PG_BINARIES = ("initdb", "pg_ctl", "postgres")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerError(RuntimeError):
    """The server cannot be started, stopped or found; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------
# PostgreSQL: binaries, the unprivileged user, the cluster
# ------------------------------------------------------------------------------------------------
def postgres_bin() -> Path:
    """The folder holding PostgreSQL's server binaries, else a ``ServerError`` saying how to install them."""
    places: list[Path] = []
    if os.environ.get("E4E_PG_BIN"):
        places.append(Path(os.environ["E4E_PG_BIN"]))

    def version(p: Path) -> tuple:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    places += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    found = shutil.which("initdb")
    if found:
        places.append(Path(found).resolve().parent)
    for d in places:
        if all(os.access(d / name, os.X_OK) for name in PG_BINARIES):
            return d
    where = ", ".join(str(p) for p in places) or "$E4E_PG_BIN, /usr/lib/postgresql/*/bin, PATH"
    raise ServerError(f"the PostgreSQL server binaries ({', '.join(PG_BINARIES)}) are not installed (looked in "
                      f"{where}): apt-get install postgresql (Debian/Ubuntu; `make server` runs it as root), or "
                      "set E4E_PG_BIN to the folder that holds them")


class PgUser:
    def __init__(self, name: str, uid: int, gid: int):
        self.name, self.uid, self.gid = name, uid, gid

    def popen_kwargs(self) -> dict:
        """Popen arguments that run a command as this user (only a root caller switches user)."""
        if os.geteuid() == 0 and self.uid != 0:
            return {"user": self.uid, "group": self.gid, "extra_groups": []}
        return {}


def pg_user(folder: Path, name: str | None = None) -> PgUser:
    """Who runs initdb and postgres: the owner of an existing cluster; else ``name``, else the caller
    when it is not root, else $E4E_PG_USER, ``postgres`` or ``nobody``. Never root."""
    import pwd

    pgdata = folder / "pgdata"
    if (pgdata / "PG_VERSION").is_file():
        owner = pgdata.stat().st_uid
        try:
            entry = pwd.getpwuid(owner)
        except KeyError:
            raise ServerError(f"{pgdata} belongs to uid {owner}, which has no account here") from None
        if name and name != entry.pw_name:
            raise ServerError(f"{pgdata} belongs to {entry.pw_name!r}, not --pg-user {name!r}: PostgreSQL runs "
                              "as the owner of its data folder")
        if os.geteuid() not in (0, owner):
            raise ServerError(f"{pgdata} belongs to {entry.pw_name!r}: run this as that user (or as root)")
    elif name or os.geteuid() == 0:
        candidates = [name] if name else [os.environ.get("E4E_PG_USER") or "", "postgres", "nobody"]
        entry = None
        for cand in filter(None, candidates):
            try:
                entry = pwd.getpwnam(cand)
                break
            except KeyError:
                if name or cand == os.environ.get("E4E_PG_USER"):
                    raise ServerError(f"no user {cand!r} to run PostgreSQL as") from None
        if entry is None:
            raise ServerError("no unprivileged user to run PostgreSQL as (postgres, nobody); pass --pg-user")
    else:
        entry = pwd.getpwuid(os.geteuid())
    if entry.pw_uid == 0:
        raise ServerError("PostgreSQL refuses to run as root; pass --pg-user with an unprivileged account")
    return PgUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _run_as(user: PgUser, argv: list, folder: Path, what: str, timeout: float = 120.0,
            log: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    try:
        out = subprocess.run([str(a) for a in argv], cwd=folder, env=env, capture_output=True, text=True,
                             timeout=timeout, **user.popen_kwargs())
    except subprocess.TimeoutExpired:
        raise ServerError(f"{what} did not finish within {timeout:.0f} s" + _tail_note(log)) from None
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise ServerError(f"{what} failed (exit {out.returncode}): {' / '.join(detail)}" + _tail_note(log))
    return out


def _tail_note(log: Path | None, n: int = 5) -> str:
    if log is None or not log.is_file():
        return ""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-n:]
    return f"; last lines of {log}: " + " / ".join(lines) if lines else ""


def _check_reachable(user: PgUser, folder: Path) -> None:
    if not user.popen_kwargs():
        return
    probe = subprocess.run(["test", "-x", str(folder)], cwd="/", capture_output=True, **user.popen_kwargs())
    if probe.returncode != 0:
        raise ServerError(f"PostgreSQL runs as user {user.name!r} (it refuses root), which cannot reach {folder}: "
                          "a folder above it is not searchable by others (/root, a 0700 temporary folder); give "
                          "--dir a folder that user can reach (e.g. /srv/e4e-mlflow), or --pg-user")


def init_cluster(folder: Path, user: PgUser, bindir: Path) -> bool:
    """``initdb`` into ``folder/pgdata`` unless a cluster is there (True when one was created): the
    database superuser ``e4e`` with a random password (written to ``folder/pgpass``), password
    authentication over TCP, listening on 127.0.0.1 only, no unix socket."""
    pgdata, pgpass = folder / "pgdata", folder / "pgpass"
    if (pgdata / "PG_VERSION").is_file():
        if not pgpass.is_file():
            raise ServerError(f"{pgpass} is missing: the database password is lost; stop the server and remove "
                              f"{pgdata} to start with an empty store")
        return False
    if pgdata.exists() and any(pgdata.iterdir()):
        raise ServerError(f"{pgdata} is not empty and holds no PostgreSQL cluster; move it away")
    _check_reachable(user, folder)
    password = secrets.token_urlsafe(24)
    _write_private(pgpass, f"127.0.0.1:*:*:{DB_USER}:{password}\n")
    pgdata.mkdir(mode=0o700, exist_ok=True)
    pwfile = folder / ".initdb-password"
    _write_private(pwfile, password + "\n")
    try:
        if user.popen_kwargs():
            os.chown(pgdata, user.uid, user.gid)
            os.chown(pwfile, user.uid, user.gid)
        _run_as(user, [bindir / "initdb", "-D", pgdata, "-U", DB_USER, f"--pwfile={pwfile}",
                       "--auth-host=scram-sha-256", "--auth-local=reject", "-E", "UTF8", "--no-locale",
                       "--no-instructions"], folder, "initdb", timeout=300)
    finally:
        pwfile.unlink(missing_ok=True)
    with open(pgdata / "postgresql.conf", "a") as f:
        f.write("\n# experiments.server: TCP on the loopback only (the tracking server is the one client)\n"
                "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")
    return True


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def postgres_port(folder: Path) -> int | None:
    """The port of the running cluster (its postmaster.pid), None when it is not running."""
    try:
        lines = (folder / "pgdata" / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return port if _pid_alive(pid) else None


def start_postgres(folder: Path, user: PgUser, bindir: Path, state: dict) -> int:
    """Start the cluster (already running: nothing to do) and create the database; returns its port."""
    port = postgres_port(folder)
    if port is None:
        port = state.get("pg_port")
        if not port or not _port_free("127.0.0.1", port):
            port = free_port()
        log = folder / "pgdata" / "postgres.log"
        _run_as(user, [bindir / "pg_ctl", "-D", folder / "pgdata", "-l", log, "-w", "-t", "60", "-o", f"-p {port}",
                       "start"], folder, "PostgreSQL (pg_ctl start)", timeout=90, log=log)
    _create_database(folder, port)
    return port


def _create_database(folder: Path, port: int) -> None:
    from e4e.extras import require_extra

    psycopg2 = require_extra("psycopg2", "server", "the tracking server's PostgreSQL store")
    try:
        con = psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres",
                               passfile=str(folder / "pgpass"), connect_timeout=10)
    except psycopg2.Error as e:
        raise ServerError(f"cannot connect to PostgreSQL on 127.0.0.1:{port}: {str(e).strip()}") from None
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        con.close()


def stop_postgres(folder: Path) -> str:
    if postgres_port(folder) is None:
        return "postgres: not running"
    user = pg_user(folder)
    _run_as(user, [postgres_bin() / "pg_ctl", "-D", folder / "pgdata", "-m", "fast", "-w", "-t", "60", "stop"],
            folder, "PostgreSQL (pg_ctl stop)", timeout=90)
    return "postgres: stopped"


# ------------------------------------------------------------------------------------------------
# the tracking server
# ------------------------------------------------------------------------------------------------
def backend_store_uri(pg_port: int) -> str:
    # psycopg2 named explicitly: SQLAlchemy 2.1's default PostgreSQL driver is psycopg (3)
    return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg_port}/{DB_NAME}"


def client_url(host: str, port: int) -> str:
    """The address clients use: the host itself, or this machine's name when it listens everywhere."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def _probe_url(host: str, port: int) -> str:
    return f"http://127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else client_url(host, port)


def healthy(url: str, timeout: float = 3.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200 and r.read().strip() == b"OK"
    except (OSError, ValueError):
        return False


def _default_allowed_hosts(host: str) -> str | None:
    """Listening beyond the loopback: MLflow's default Host-header allowance (localhost, private IPs)
    plus this machine's names, which clients on other hosts put in their requests."""
    if host in LOOPBACK:
        return None
    names = {socket.gethostname(), socket.getfqdn(), host} - {"", "0.0.0.0", "::"}
    try:
        from mlflow.server.security_utils import get_default_allowed_hosts

        allowed = list(get_default_allowed_hosts())
    except Exception:  # noqa: BLE001 - an MLflow without it: the loopback names
        allowed = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"]
    return ",".join(allowed + [p for n in sorted(names) for p in (n, f"{n}:*")])


def _mlflow_command() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]


def start(folder: str | Path = DEFAULT_DIR, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          workers: int = DEFAULT_WORKERS, pg_user_name: str | None = None, allowed_hosts: str | None = None,
          timeout: float = DEFAULT_TIMEOUT_S, say=print) -> str:
    """Start PostgreSQL and the tracking server in ``folder`` (each only if not running) and wait until
    the server answers ``/health``; returns the URL clients use."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    state = read_state(folder)
    if _server_pid(folder, state) is not None:
        url = state["url"]
        if not healthy(_probe_url(state["host"], state["port"])):
            raise ServerError(f"the tracking server of {folder} runs (pid {state['pid']}) but {url}/health does "
                              f"not answer; see {folder / 'mlflow.log'}, or stop it and start again")
        say(f"mlflow server: already running at {url} (pid {state['pid']}, log {folder / 'mlflow.log'})")
        return url
    bindir = postgres_bin()
    from e4e.extras import require_extra

    require_extra("psycopg2", "server", "the tracking server's PostgreSQL store")
    if not _port_free(host, port):
        raise ServerError(f"port {port} on {host} is in use (another MLflow server or `make ui`?); pick another "
                          "with --port")
    user = pg_user(folder, pg_user_name)
    if init_cluster(folder, user, bindir):
        say(f"postgres: new cluster in {folder / 'pgdata'} (initdb as user {user.name!r})")
    pg_port = start_postgres(folder, user, bindir, state)
    say(f"postgres: running on 127.0.0.1:{pg_port} as user {user.name!r} (log {folder / 'pgdata' / 'postgres.log'})")
    artifacts = folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    allowed_hosts = allowed_hosts or _default_allowed_hosts(host)
    cmd = _mlflow_command() + ["server", "--backend-store-uri", backend_store_uri(pg_port),
                               "--serve-artifacts", "--artifacts-destination", str(artifacts),
                               "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    env = {**os.environ, "PGPASSFILE": str(folder / "pgpass")}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI jobs: one process fewer
    env.pop("MLFLOW_TRACKING_URI", None)
    url = client_url(host, port)
    log_path = folder / "mlflow.log"
    with open(log_path, "ab") as log:
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} experiments.server start: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (folder / "mlflow.pid").write_text(f"{proc.pid}\n")
    state.update(url=url, host=host, port=port, pg_port=pg_port, pg_user=user.name, pid=proc.pid,
                 pid_start=_proc_start(proc.pid), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_state(folder, state)
    deadline = time.monotonic() + timeout
    while not healthy(_probe_url(host, port), timeout=2):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not healthy after {timeout:.0f} s"
            _stop_group(proc.pid)
            proc.wait()
            (folder / "mlflow.pid").unlink(missing_ok=True)
            raise ServerError(f"the tracking server {why}" + _tail_note(log_path, 8))
        time.sleep(0.5)
    say(f"mlflow server: {url} (pid {proc.pid}, log {log_path}, artifacts {artifacts})")
    return url


def stop(folder: str | Path = DEFAULT_DIR, say=print) -> None:
    """Stop the tracking server (its whole process group: SIGTERM, SIGKILL after 30 s), then PostgreSQL."""
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise ServerError(f"no server folder {folder}")
    state = read_state(folder)
    pid = _server_pid(folder, state)
    if pid is None:
        say("mlflow server: not running")
    else:
        _stop_group(pid)
        say(f"mlflow server: stopped (pid {pid})")
    (folder / "mlflow.pid").unlink(missing_ok=True)
    say(stop_postgres(folder))


def _stop_group(pgid: int, grace_s: float = 30.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    """Some process of group ``pgid`` is still running (zombies aside; reaped here when they are ours)."""
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _server_pid(folder: Path, state: dict) -> int | None:
    """The pid of the tracking server this folder started, if that process still runs."""
    try:
        pid = int((folder / "mlflow.pid").read_text())
    except (OSError, ValueError):
        return None
    if pid != state.get("pid") or not _pid_alive(pid):
        return None
    if state.get("pid_start") is not None and _proc_start(pid) != state["pid_start"]:
        return None   # the pid was reused by another process
    return pid


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _proc_start(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return {}


def write_state(folder: Path, state: dict) -> None:
    tmp = folder / "server.json.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, folder / "server.json")


def status(folder: str | Path = DEFAULT_DIR) -> tuple[bool, str]:
    """(everything runs and answers, a few lines saying what runs where)."""
    folder = Path(folder).absolute()
    state = read_state(folder)
    pg = postgres_port(folder)
    lines = [f"folder: {folder}",
             f"postgres: running on 127.0.0.1:{pg} as user {state.get('pg_user', '?')!r}" if pg else
             "postgres: not running" + ("" if (folder / "pgdata" / "PG_VERSION").is_file() else " (no cluster yet)")]
    pid = _server_pid(folder, state)
    ok = False
    if pid is None:
        lines.append("mlflow server: not running")
    else:
        ok = healthy(_probe_url(state["host"], state["port"])) and pg is not None
        lines.append(f"mlflow server: {state['url']} (pid {pid}, {'healthy' if ok else 'NOT answering /health'}, "
                     f"log {folder / 'mlflow.log'})")
        lines.append(f"export MLFLOW_TRACKING_URI={state['url']}")
    return ok, "\n".join(lines)


def url(folder: str | Path = DEFAULT_DIR) -> str:
    """The running server's URL, else a ``ServerError``."""
    folder = Path(folder).absolute()
    state = read_state(folder)
    if _server_pid(folder, state) is None or not healthy(_probe_url(state["host"], state["port"])):
        raise ServerError(f"no tracking server runs from {folder}; start it: python -m experiments.server start "
                          f"--dir {folder} (or make server)")
    return state["url"]


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    ap = Parser(prog="python -m experiments.server", description=__doc__, formatter_class=fmt)
    sub = ap.add_subparsers(dest="command", required=True)
    cmds = {"start": "start PostgreSQL and the tracking server (initdb on the first start); wait until healthy",
            "stop": "stop the tracking server, then PostgreSQL",
            "status": "what runs, where (exit 1 when the server is not up)",
            "url": "print the server's URL (for MLFLOW_TRACKING_URI); an error when it is not running"}
    for name, text in cmds.items():
        p = sub.add_parser(name, help=text, description=text, formatter_class=fmt)
        p.add_argument("--dir", default=os.environ.get("E4E_SERVER_DIR") or DEFAULT_DIR,
                       help="the server's folder ($E4E_SERVER_DIR overrides the default)")
        if name == "start":
            p.add_argument("--host", default=DEFAULT_HOST,
                           help="interface the tracking server listens on; 0.0.0.0 for other hosts (a cluster's "
                                "nodes), which then reach it as http://<this host>:<port>")
            p.add_argument("--port", type=positive_int, default=int(os.environ.get("E4E_SERVER_PORT") or DEFAULT_PORT),
                           help="the tracking server's port ($E4E_SERVER_PORT overrides the default)")
            p.add_argument("--workers", type=positive_int, default=DEFAULT_WORKERS, help="server worker processes")
            p.add_argument("--pg-user", default=None,
                           help="run as root: the unprivileged user PostgreSQL runs as (default: $E4E_PG_USER, "
                                "else postgres, else nobody; an existing cluster: its owner)")
            p.add_argument("--allowed-hosts", default=None,
                           help="Host headers the server accepts (mlflow server --allowed-hosts); default: "
                                "MLflow's (localhost, private IPs), plus this machine's names when --host is not "
                                "the loopback")
            p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                           help="seconds to wait for the server to answer /health")
    return ap


@guarded(ServerError)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "start":
        found = start(args.dir, args.host, args.port, args.workers, args.pg_user, args.allowed_hosts, args.timeout)
        print(f"export MLFLOW_TRACKING_URI={found}")
        return 0
    if args.command == "stop":
        stop(args.dir)
        return 0
    if args.command == "status":
        ok, text = status(args.dir)
        print(text)
        return 0 if ok else 1
    print(url(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
