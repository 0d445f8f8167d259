"""The team's MLflow tracking server: PostgreSQL backend store, proxied artifacts, optional basic-auth login.

Consumes: command-line options (``make server`` passes its variables), and from the environment
``MLFLOW_AUTH_ADMIN_PASSWORD`` (the auth app's first admin password), ``MLFLOW_S3_ENDPOINT_URL`` and
``AWS_*`` (an S3 artifact destination: only the server holds them). Produces: a running
``mlflow server`` on ``--host``:``--port`` (default 127.0.0.1:5000) and, when no ``--backend-store-uri``
is given, a PostgreSQL cluster of its own; their state (``server.json``, logs, the cluster, local
artifacts, generated passwords, mode 0600) under ``--state-dir`` (default ``.cache/server``).

Run::

    make server                          # PostgreSQL cluster in .cache/server, artifacts in .cache/server/artifacts
    make server AUTH=1                   # the same behind MLflow's basic-auth app
    MLFLOW_BACKEND_STORE_URI=postgresql://user:pw@db.example.com/mlflow \\
    MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/mlflow make server
    make server-stop                     # stops what `make server` started (the server, and its cluster)
    python -m pipeline.server status     # where it listens, its store and artifacts; exit 1 if not running
    python -m pipeline.server start|stop|status --help

Both engines are started the way their own docs say: the cluster with ``initdb`` and ``pg_ctl`` (as user
``postgres`` when run as root, which PostgreSQL refuses), listening on 127.0.0.1 only with password
(SCRAM) authentication; the server with ``mlflow server --backend-store-uri ... --artifacts-destination ...``
so clients upload and download artifacts through it and never hold storage credentials. Database
passwords travel to the server in ``PGPASSWORD``, never on a command line that ``ps`` shows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from pipeline.core.errors import UserError, user_errors
from pipeline.core.files import write_json, write_text

DB_USER = "mlflow"
DB_NAME = "mlflow"
AUTH_DB_NAME = "mlflow_auth"  # its own database: both stores keep an `alembic_version` table
START_TIMEOUT = 120.0
RECORD = "server.json"  # in the state folder: what start started


@dataclass
class Started:
    """What ``start`` started, kept in ``<state-dir>/server.json`` so that ``stop`` stops exactly that."""

    uri: str
    pid: int
    backend: str  # the backend store URI, credentials removed
    artifacts: str
    auth: bool
    pg_data: str | None = None  # the cluster we started (None: a database given by URL)
    pg_port: int | None = None
    log: str = ""

    def summary(self) -> str:
        return f"store {self.backend}, artifacts {self.artifacts}{', basic-auth' if self.auth else ''}; log {self.log}"

    @classmethod
    def read(cls, state: Path) -> Started | None:
        """The record in ``state``, or None where nothing was started from it."""
        record = state / RECORD
        return cls(**json.loads(record.read_text())) if record.exists() else None


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def pg_binary(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if versions:
        return str(versions[-1])
    raise UserError(
        f"PostgreSQL's {name} not found: install the server (Debian: apt-get install postgresql) "
        "or give an existing database with MLFLOW_BACKEND_STORE_URI=postgresql://user:password@host/db"
    )


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the package's ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def split_password(url: str) -> tuple[str, str | None]:
    """``postgresql://u:pw@h/db`` -> (``postgresql+psycopg://u@h/db``, ``pw``): the password goes to
    ``PGPASSWORD``, out of the command line. ``postgresql://`` is pinned to psycopg 3 (the ``server`` extra)."""
    parts = urlsplit(url)
    scheme = "postgresql+psycopg" if parts.scheme in ("postgresql", "postgres") else parts.scheme
    if parts.password is None:
        return urlunsplit((scheme, *parts[1:])), None
    netloc = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((scheme, netloc, *parts[2:])), unquote(parts.password)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise UserError(f"mlflow server exited with status {proc.returncode}; the end of {log}:\n{tail}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.5)
    raise UserError(f"mlflow server did not answer {url}/health within {timeout:.0f} s; see {log}")


# --------------------------------------------------------------------------- PostgreSQL


def start_cluster(state: Path) -> tuple[Path, int, str]:
    """Create (first time) and start a PostgreSQL cluster under ``state/postgres``, listening on 127.0.0.1
    only; create the databases. Returns the data folder, its port and the password of user ``mlflow``."""
    data, pw_file, log = state / "postgres", state / "postgres.password", state / "postgres.log"
    if not (data / "PG_VERSION").exists():
        if os.geteuid() == 0 and any(not os.stat(p).st_mode & 0o001 for p in data.parents if p.exists()):
            raise UserError(
                f"PostgreSQL runs as user postgres, which cannot reach {data}: allow others to enter its parent "
                "folders (chmod o+x), choose another --state-dir, or give MLFLOW_BACKEND_STORE_URI=postgresql://..."
            )
        secret_file(pw_file)
        data.mkdir(parents=True, exist_ok=True)
        give_to_postgres(data)
        pw_copy = state / "initdb.password"  # readable by postgres for initdb, removed right after
        pw_copy.write_text(pw_file.read_text())
        give_to_postgres(pw_copy)
        try:
            init = subprocess.run(
                as_postgres([pg_binary("initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(pw_copy),
                             "--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C.UTF-8"]),
                capture_output=True, text=True,
            )  # fmt: skip
        finally:
            pw_copy.unlink(missing_ok=True)
        if init.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)  # nothing half-made: the next start begins afresh
            raise UserError(f"initdb failed for {data}:\n{init.stderr[-2000:]}")
    password = pw_file.read_text().strip()
    port = free_port()
    log.touch()
    give_to_postgres(log)
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    started = subprocess.run(
        as_postgres([pg_binary("pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(log), "-o", options]),
        capture_output=True, text=True,
    )  # fmt: skip
    if started.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise UserError(f"PostgreSQL did not start from {data}: {started.stderr.strip()}\n{tail}")
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user=DB_USER, password=password, dbname="postgres",
                         autocommit=True) as conn:  # fmt: skip
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in (DB_NAME, AUTH_DB_NAME):
            if name not in existing:
                conn.execute(f'CREATE DATABASE "{name}"')
    return data, port, password


def stop_cluster(data: Path) -> None:
    if (data / "postmaster.pid").exists():
        subprocess.run(as_postgres([pg_binary("pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(data)]),
                       capture_output=True, text=True)  # fmt: skip


# --------------------------------------------------------------------------- the server


def secret_file(path: Path) -> str:
    """A random secret generated once into ``path`` (mode 0600), so restarts keep it."""
    if not path.exists():
        write_text(path, secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def auth_config(state: Path, auth_db: str, env: dict[str, str]) -> Path:
    """The basic-auth app's ini: its users in their own database; the first admin's password from
    ``$MLFLOW_AUTH_ADMIN_PASSWORD``, else generated once into ``<state>/admin_password``; the key that signs
    the UI's CSRF tokens from ``$MLFLOW_FLASK_SERVER_SECRET_KEY``, else generated once (all mode 0600)."""
    for name, file in (
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "admin_password"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask_secret_key"),
    ):
        if not env.get(name):
            env[name] = secret_file(state / file)
    if len(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) < 12:
        raise UserError("MLFLOW_AUTH_ADMIN_PASSWORD: MLflow's auth app needs at least 12 characters")
    ini = state / "basic_auth.ini"
    write_text(
        ini,
        "[mlflow]\n"
        "default_permission = READ\n"  # every user may read every experiment; writing needs a grant or admin
        f"database_uri = {auth_db}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    return ini


def start(
    state: Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    backend: str | None = None,
    artifacts: str | None = None,
    auth: bool = False,
    workers: int = 2,
    extra_args: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
) -> Started:
    """Start PostgreSQL (unless ``backend`` names a database) and ``mlflow server``; return what started.
    ``environ``: the server's environment (default: this process's), e.g. its storage credentials."""
    state = state.resolve()
    old = Started.read(state)
    if old is not None:
        if _alive(old.pid):
            raise UserError(f"a server started from {state} is already running at {old.uri} (make server-stop)")
        stop(state)
    if port_in_use(host, port):
        raise UserError(f"{host}:{port} is already in use: choose another port (make server PORT=5055)")
    state.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if environ is None else environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the server's own store is the backend below, never a client setting
    # MLflow's job runner (GenAI judges, trace roll-ups: about ten huey worker processes) does nothing for
    # model training runs; off unless asked for.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    pg_data = pg_port = None
    if backend:
        backend_uri, password = split_password(backend)
        parts = urlsplit(backend_uri)  # the auth app's users: a database of their own beside the given one
        auth_db = urlunsplit((*parts[:2], parts.path.rstrip("/") + "_auth", *parts[3:]))
    else:
        pg_data, pg_port, password = start_cluster(state)
        backend_uri = f"postgresql+psycopg://{DB_USER}@127.0.0.1:{pg_port}/{DB_NAME}"
        auth_db = f"postgresql+psycopg://{DB_USER}@127.0.0.1:{pg_port}/{AUTH_DB_NAME}"
    if password is not None:
        env["PGPASSWORD"] = password
    destination = artifacts or (state / "artifacts").as_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
           "--backend-store-uri", backend_uri, "--artifacts-destination", destination, "--workers", str(workers)]  # fmt: skip
    if auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(state, auth_db, env))
        cmd += ["--app-name", "basic-auth"]
    cmd += list(extra_args)
    log = state / "mlflow.log"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=state)  # fmt: skip
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        started = Started(
            url, proc.pid, backend_uri, destination, auth, str(pg_data) if pg_data else None, pg_port, str(log)
        )
        write_json(state / RECORD, asdict(started))
        wait_healthy(url, proc, log)
    except BaseException:
        stop(state)
        raise
    return started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(state: Path, timeout: float = 30.0) -> Started | None:
    """Stop the server (its whole process group: uvicorn's workers too) and the cluster it started."""
    started = Started.read(state)
    if started is None:
        return None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(started.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(started.pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(started.pid, os.WNOHANG)
            time.sleep(0.2)
        os.killpg(started.pid, signal.SIGKILL)
    if started.pg_data:
        stop_cluster(Path(started.pg_data))
    (state / RECORD).unlink()
    return started


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", type=Path, default=Path(".cache/server"), help="default: .cache/server")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000)
    # From the environment by default: a database URL holds a password, which make would echo.
    parser.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI", ""),
                        help="postgresql://... (default: $MLFLOW_BACKEND_STORE_URI, else a cluster of our own)")  # fmt: skip
    parser.add_argument("--artifacts-destination", default=os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", ""),
                        help="s3://bucket/prefix or a folder (default: $MLFLOW_ARTIFACTS_DESTINATION, else state)")  # fmt: skip
    parser.add_argument("--auth", action="store_true", help="MLflow's basic-auth app (--app-name basic-auth)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    args, extra = parser.parse_known_args(argv)
    with user_errors():
        if args.action == "start":
            artifacts = args.artifacts_destination
            if artifacts and "://" not in artifacts:
                artifacts = Path(artifacts).resolve().as_uri()
            s = start(args.state_dir, args.host, args.port, args.backend_store_uri or None, artifacts or None,
                      args.auth, args.workers, tuple(extra))  # fmt: skip
            print(f"MLflow tracking server at {s.uri}: {s.summary()}")
            if s.auth and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
                print(f"admin's first password is in {args.state_dir / 'admin_password'}: change it (README)")
            print(f"use it: export MLFLOW_TRACKING_URI={s.uri}")
        elif args.action == "stop":
            stopped = stop(args.state_dir)
            print(f"stopped the server at {stopped.uri}" if stopped else f"no server started from {args.state_dir}")
        else:
            found = Started.read(args.state_dir)
            if found is None:
                raise SystemExit(f"no server started from {args.state_dir}")
            running = _alive(found.pid)
            print(f"{found.uri}: {'running' if running else 'not running'} (pid {found.pid}); {found.summary()}")
            if not running:
                raise SystemExit(1)
