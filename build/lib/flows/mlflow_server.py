"""A team-style MLflow tracking server (`make mlflow-server`): PostgreSQL backend store + proxied artifacts.

    python -m flows.mlflow_server [--port 5000] [--artifacts DIR] [--pgdata DIR]

Backend store: MLFLOW_BACKEND_STORE_URI when set (a team's own database, e.g.
`postgresql+psycopg://mlflow@db.example:5432/mlflow`, password in ~/.pgpass or PGPASSWORD, never in the repo),
else a PostgreSQL cluster started here: initdb in a temp folder (or --pgdata, kept between runs), no TCP
listener, its unix socket in that folder, trust auth for the local user only, stopped with the server.
Artifacts: `--serve-artifacts --artifacts-destination DIR`, so clients upload and download through the server
(http://127.0.0.1:PORT) and need no access to DIR. The server binds 127.0.0.1. Point the pipeline at it with
MLFLOW_TRACKING_URI=http://127.0.0.1:PORT (it takes precedence over params' SQLite store).

PostgreSQL is Debian's `postgresql` package (`make postgres` installs it); as root, the cluster runs as the
`postgres` user (initdb refuses to run as root). `PostgresCluster` and `MlflowServer` are also the test fixtures'.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import glob
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.processes import HOST, free_port, stop_process_group

log = logging.getLogger(__name__)

BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"
PG_BINDIR_ENV = "PG_BINDIR"
ROOT_RUNS_AS = "postgres"  # the Debian package's system user
DATABASE = "mlflow"
STARTUP_TIMEOUT_S = 120.0


class PostgresMissing(RuntimeError):
    pass


def pg_bindir() -> Path:
    """PostgreSQL's server binaries: $PG_BINDIR, else initdb on PATH, else the newest /usr/lib/postgresql/*/bin."""
    configured = os.environ.get(PG_BINDIR_ENV)
    if configured:
        return Path(configured)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    raise PostgresMissing(
        "PostgreSQL's initdb was not found: install Debian's `postgresql` package (`make postgres`), "
        f"set {PG_BINDIR_ENV}, or set {BACKEND_ENV} to an existing database"
    )


def _run_as() -> tuple[str | None, str]:
    """(OS user to run the cluster as, or None for this process's own; the database superuser's name)."""
    me = getpass.getuser()
    if os.geteuid() != 0:
        return None, me
    try:
        pwd.getpwnam(ROOT_RUNS_AS)
    except KeyError:
        raise PostgresMissing(
            f"running as root, the cluster must run as the {ROOT_RUNS_AS!r} user (initdb refuses root), "
            "which does not exist: install Debian's `postgresql` package or run as a normal user"
        ) from None
    return ROOT_RUNS_AS, me


class PostgresCluster:
    """A private PostgreSQL cluster: unix socket only (in its folder), trust auth for one database user."""

    def __init__(self, pgdata: Path | None = None):
        self.keep = pgdata is not None
        self.base = Path(pgdata) if pgdata else Path(tempfile.mkdtemp(prefix="ht-postgres-"))
        self.data, self.socket_dir, self.log_path = self.base / "data", self.base / "socket", self.base / "postgres.log"
        self.os_user, self.db_user = _run_as()
        self.port = free_port()  # names the socket file (.s.PGSQL.<port>); nothing listens on TCP
        self.process: subprocess.Popen | None = None

    @property
    def dsn(self) -> str:
        """SQLAlchemy URL for MLflow's --backend-store-uri (psycopg 3 driver, unix socket)."""
        return f"postgresql+psycopg://{self.db_user}@/{DATABASE}?host={self.socket_dir}&port={self.port}"

    def _user_kwargs(self) -> dict:
        if self.os_user is None:
            return {}
        entry = pwd.getpwnam(self.os_user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _own(self, path: Path) -> None:
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self, bindir: Path) -> None:
        self.data.mkdir(mode=0o700)
        self._own(self.data)
        done = subprocess.run(
            [str(bindir / "initdb"), "-D", str(self.data), "-U", self.db_user, "-E", "UTF8", "--no-instructions"]
            + ["--auth-local=trust", "--auth-host=reject"],
            capture_output=True,
            text=True,
            cwd=self.base,
            **self._user_kwargs(),
        )
        if done.returncode:
            raise RuntimeError(f"initdb {self.data} failed (exit {done.returncode}):\n{done.stderr.strip()}")
        # only this database user, only over the socket (whose folder only the cluster's owner can enter)
        (self.data / "pg_hba.conf").write_text(f"local all {self.db_user} trust\n")

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> PostgresCluster:
        bindir = pg_bindir()
        self.base.mkdir(parents=True, exist_ok=True)
        self._own(self.base)
        if not (self.data / "PG_VERSION").exists():
            self._initdb(bindir)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._own(self.socket_dir)
        options = {"listen_addresses": "", "unix_socket_directories": str(self.socket_dir), "port": str(self.port)}
        cmd = [str(bindir / "postgres"), "-D", str(self.data)]
        for key, value in options.items():
            cmd += ["-c", f"{key}={value}"]
        with self.log_path.open("ab") as out:
            self._own(self.log_path)
            self.process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
                start_new_session=True,
                **self._user_kwargs(),
            )
        started = time.monotonic()
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() - started > timeout_s:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop(keep_files=True)
                raise RuntimeError(f"PostgreSQL did not start within {timeout_s:.0f} s (log {self.log_path}):\n{tail}")
            time.sleep(0.2)
        self._create_database()
        log.info("PostgreSQL up in %.1f s (socket %s)", time.monotonic() - started, self.socket_dir)
        return self

    def _connect(self, dbname: str):
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=self.db_user,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def _ready(self) -> bool:
        import psycopg

        try:
            with self._connect("postgres"):
                return True
        except psycopg.OperationalError:
            return False

    def _create_database(self) -> None:
        with self._connect("postgres") as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def stop(self, timeout_s: float = 30.0, keep_files: bool = False) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            stop_process_group(proc, signal.SIGINT, timeout_s)  # SIGINT: PostgreSQL's "fast" shutdown
        if not (keep_files or self.keep):
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_command(backend_uri: str, artifacts: str | Path, port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


class MlflowServer:
    """`mlflow server` on 127.0.0.1:PORT over `backend_uri`, proxying artifacts to `artifacts` (own process group)."""

    def __init__(self, backend_uri: str, artifacts: str | Path, port: int | None = None, log_path: Path | None = None):
        # a folder (made absolute) or an object-store URI (s3://..., gs://...), passed on as it is
        self.artifacts = str(artifacts) if "://" in str(artifacts) else Path(artifacts).resolve()
        self.backend_uri, self.port = backend_uri, port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"mlflow-server-{self.port}-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> MlflowServer:
        if isinstance(self.artifacts, Path):
            self.artifacts.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job runner: unused here
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                server_command(self.backend_uri, self.artifacts, self.port),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        started = time.monotonic()
        while not healthy(self.url, timeout_s=1.0):
            if self.process.poll() is not None or time.monotonic() - started > timeout_s:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(
                    f"mlflow server did not start within {timeout_s:.0f} s (log {self.log_path}):\n{tail}"
                )
            time.sleep(0.5)
        log.info("MLflow server up on %s in %.1f s", self.url, time.monotonic() - started)
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            stop_process_group(proc, signal.SIGTERM, timeout_s)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def backend_store(pgdata: Path | None = None) -> Iterator[str]:
    """MLFLOW_BACKEND_STORE_URI when set, else a local PostgreSQL cluster's DSN for the duration."""
    configured = os.environ.get(BACKEND_ENV)
    if configured:
        yield configured
        return
    with PostgresCluster(pgdata) as cluster:
        yield cluster.dsn


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.mlflow_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.add_argument(
        "--artifacts",
        default="mlflow/server-artifacts",
        help="where the server keeps artifacts: a folder or an object-store URI (default mlflow/server-artifacts)",
    )
    parser.add_argument(
        "--pgdata",
        default=None,
        help=f"keep the local cluster here (default: a temp one, gone on exit; no {BACKEND_ENV})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # `kill` (SIGTERM) stops like Ctrl-C: the server and the cluster are stopped, the temp cluster removed
    signal.signal(signal.SIGTERM, _interrupt)
    if not os.environ.get(BACKEND_ENV) and not args.pgdata:
        log.warning("No %s: a throwaway PostgreSQL cluster (gone on exit; --pgdata DIR keeps one)", BACKEND_ENV)
    try:
        with backend_store(Path(args.pgdata).resolve() if args.pgdata else None) as uri:
            server = MlflowServer(uri, args.artifacts, args.port).start()
            print(
                f"MLflow server on {server.url}; use MLFLOW_TRACKING_URI={server.url} (Ctrl-C stops it; log "
                f"{server.log_path})",
                flush=True,
            )
            try:
                while server.process.poll() is None:
                    time.sleep(1)
                raise SystemExit(f"mlflow server exited (log {server.log_path})")
            finally:
                server.stop()
    except PostgresMissing as err:
        raise SystemExit(str(err)) from None
    except KeyboardInterrupt:
        log.info("Stopped")


if __name__ == "__main__":
    main(sys.argv[1:])
