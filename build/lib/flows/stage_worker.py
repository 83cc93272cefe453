"""A warm stage worker: one process imports the stages' libraries once (torch, transformers, datasets, MLflow,
Prefect, Great Expectations, the pipeline package: ~7-10 s on 2 cores), then forks a child per stage that runs the
stage's `python -m flows.<stage> ARGS` as that command would, minus the imports.

    python -m flows.stage_worker SOCKET    # serves until stopped (SIGTERM) or its socket's folder is removed

flows/parallel_repro.py starts one for a run of several stages and runs each stage command of the form `python -m
MODULE ARGS` through it (StageWorker.start); any other command (shell syntax, another program), or no worker (not
yet up, or gone), runs as a plain subprocess. A child is what a fresh `python -m` process would be:

- the same environment: the worker refuses a stage whose environment differs from its own (libraries read some
  variables at import time, e.g. HF_HUB_OFFLINE), and the orchestrator then starts it as a subprocess;
- its own session (process group: stopped as a whole), working directory, argv, stdin from /dev/null, stdout and
  stderr into the pipe the orchestrator reads (passed over the socket);
- Python's and NumPy's global random state re-seeded from the OS (as at a process start; the stages seed what
  they train with themselves), default signal handlers;
- its exit status reported back when it ends (`exit N`, negative for a signal, as subprocess does).

The worker never runs anything itself and holds no threads, so forking it is safe; a child shares the imported
modules' memory with it until it writes to them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pkgutil
import random
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("hello_transformers")

# What the stages import, heaviest first; the rest of the pipeline package follows (preload()).
LIBRARIES = (
    "torch",
    "transformers",
    "transformers.trainer",
    "datasets",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.transformers",
    "prefect",
    "prefect.flows",
    "great_expectations",
    "sklearn.metrics",
    "seqeval.metrics",
    "sacrebleu",
    "rouge_score.rouge_scorer",
    "matplotlib",
)
STAGE_COMMAND = re.compile(r"^python -m ([A-Za-z_][\w.]*)(\s.*)?$")
READY_TIMEOUT_S = 120.0
MAX_MESSAGE = 1 << 20


# ---------------------------------------------------------------- the worker
def preload() -> list[str]:
    """Import LIBRARIES, the pipeline package and the stage modules; returns what failed to import."""
    import pipeline

    names = list(LIBRARIES)
    names += [m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.")]
    names += [f"flows.{m.name}" for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name != "stage_worker"]
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # a stage importing it fails the same way in its own process
            failed.append(f"{name} ({type(err).__name__}: {err})")
    return failed


def initial_environ() -> dict[str, str]:
    """The environment this process was started with (Linux: /proc/self/environ), before the flows package and the
    preloaded libraries added their defaults to os.environ, as they do in a stage's own process too."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError as err:
        raise SystemExit(f"stage worker: cannot read the process environment ({err}); not serving") from None
    items = (item.split("=", 1) for item in os.fsdecode(raw).split("\0") if "=" in item)
    return {key: value for key, value in items}


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 2)
    while data and not data.endswith(b"\n"):
        more = conn.recv(MAX_MESSAGE)
        if not more:
            break
        data += more
    return json.loads(data or b"{}"), fds


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the stage's process and run it; never returns."""
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        out = fds[0]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        for fd in {null, *fds}:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        sys.path[0] = request["cwd"]
        random.seed()
        with contextlib.suppress(ImportError):
            import numpy

            numpy.random.seed()
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)  # noqa: SIM115
        import runpy

        sys.argv = [request["module"], *request["args"]]
        sys.modules.pop(request["module"], None)  # preloaded as a module; `python -m` runs it afresh as __main__
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:  # as the interpreter treats it: None 0, an int itself, anything else printed, 1
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        import atexit
        import threading

        with contextlib.suppress(Exception):
            threading._shutdown()  # type: ignore[attr-defined]  # as at interpreter exit: non-daemon threads
        atexit._run_exitfuncs()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(path: str, env: dict[str, str]) -> None:
    """Listen on the unix socket `path`; fork a child per request whose environment is `env` (the worker's own as it
    started); report each child's exit to its requester."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(16)
    os.replace(path + ".tmp", path)  # the socket appears only once the worker is ready
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    while not (stop and not children):
        if not os.path.exists(path) and not children:
            break  # the orchestrator removed the socket: nothing more will come
        for _key, _ in selector.select(timeout=0.05):
            if stop:
                break
            conn, _ = listener.accept()
            try:
                request, fds = _read_request(conn)
            except (OSError, ValueError):
                conn.close()
                continue
            if request.get("env") != env:
                conn.sendall(b"refused: environment differs from the worker's\n")
                conn.close()
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:
                selector.close()
                listener.close()
                for other in children.values():
                    other.close()
                conn.close()
                _child(request, fds)
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            conn.sendall(f"pid {pid}\n".encode())
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()
    listener.close()


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m flows.stage_worker SOCKET")
    import threading

    env = initial_environ()
    failed = preload()
    if failed:
        print("stage worker: could not preload " + "; ".join(failed), file=sys.stderr)
    if threading.active_count() > 1:  # forking a process with threads can leave a child holding a dead lock
        raise SystemExit(f"stage worker: an import started threads ({threading.enumerate()}); not serving")
    serve(argv[0], env)


# ---------------------------------------------------------------- the orchestrator's side
class ForkedStage:
    """A stage running in a child of the worker, with the part of subprocess.Popen's interface the orchestrator
    uses: pid, stdout (text lines), poll(), wait(timeout), returncode."""

    def __init__(self, conn: socket.socket, pid: int, stdout):
        self.conn, self.pid, self.stdout = conn, pid, stdout
        self.returncode: int | None = None
        self._buffer = b""

    def _read_status(self, timeout: float | None) -> None:
        self.conn.settimeout(timeout)
        try:
            while b"\n" not in self._buffer:
                chunk = self.conn.recv(256)
                if not chunk:  # the worker died: the stage's status is lost with it; -1 once the stage is gone
                    if self._alive():
                        time.sleep(timeout or 0.2)
                    else:
                        self.returncode = -1
                    return
                self._buffer += chunk
        except (TimeoutError, BlockingIOError):
            return
        line = self._buffer.split(b"\n", 1)[0].decode()
        self.returncode = int(line.split()[1])
        self.conn.close()

    def _alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read_status(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("stage", timeout)
            self._read_status(min(left, 0.5) if left is not None else 0.5)
        return self.returncode  # type: ignore[return-value]


class StageWorker:
    """The orchestrator's handle on one worker process (started in the background: its preloading overlaps the
    first stages, which run as subprocesses until it is ready)."""

    def __init__(self, repo: Path, env: dict[str, str]):
        self.repo, self.env = Path(repo).resolve(), env
        # `python` in a stage command is the first on the stages' PATH; the worker is this interpreter
        found = shutil.which("python", path=env.get("PATH"))
        same = found is not None and os.path.abspath(os.path.dirname(found)) == os.path.dirname(sys.executable)
        self.same_python = same  # (the same bin folder: the same virtual environment)
        self.folder = tempfile.mkdtemp(prefix="ht-stage-worker-")
        self.path = os.path.join(self.folder, "socket")
        self._log = open(os.path.join(self.folder, "worker.log"), "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.stage_worker", self.path],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    def ready(self) -> bool:
        return self.proc.poll() is None and os.path.exists(self.path)

    def start(self, cmd: str, cwd: Path) -> ForkedStage | None:
        """Run `cmd` (`python -m MODULE ARGS`, in the repository root) in a child of the worker; None when it
        cannot (not ready, another command or folder, refused): the caller then starts it as a subprocess."""
        match = STAGE_COMMAND.match(cmd.strip())
        if not match or not self.same_python or Path(cwd).resolve() != self.repo or not self.ready():
            return None  # the worker's modules were imported from the repository root, as `python -m` there does
        try:
            args = shlex.split(match.group(2) or "")
        except ValueError:
            return None
        if any(re.search(r"[|&;<>$`]", a) for a in args):  # shell syntax: the shell must run it
            return None
        read_end, write_end = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            request = {"module": match.group(1), "args": args, "cwd": str(cwd), "env": self.env}
            socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [write_end])
            os.close(write_end)
            write_end = -1
            conn.settimeout(30)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(256)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            reply = b""
        if write_end >= 0:
            os.close(write_end)
        if not reply.startswith(b"pid "):
            conn.close()
            os.close(read_end)
            if reply:
                log.info("stage worker: %s", reply.decode().strip())
            return None
        stdout = open(read_end, encoding="utf-8", errors="replace")  # noqa: SIM115
        return ForkedStage(conn, int(reply.split()[1]), stdout)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
