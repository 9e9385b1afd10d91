"""Run the real `mlflow models serve --env-manager local` on the loopback interface, as a context manager.

Used by tests/test_serve.py and bench/serve.py. The server is MLflow's FastAPI app under uvicorn; `mlflow models
serve` starts uvicorn as its child through `bash -c "exec uvicorn ..."`, found on PATH, so the interpreter's own
bin folder goes first on the child's PATH. Both processes live in a new session (process group) that is
terminated as a whole on exit (SIGTERM, then SIGKILL after a grace period). `models:/` URIs resolve through
MLFLOW_TRACKING_URI, which the child gets from `tracking_uri`. uvicorn gets UVICORN_HTTP=ncood.serve.guard's
protocol, so over-large, deeply nested or untyped bodies get a 4xx before MLflow parses them.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

from ncood.serve.guard import PROTOCOL
from ncood.serve.decoding import LIMITS_ENV

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def serve_args(model_uri: str, port: int, workers: int = 1, host: str = LOOPBACK) -> list[str]:
    """argv of `mlflow models serve` (default: on the loopback interface) with the current environment."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", host, "-p", str(port), "-w", str(workers)]


def serve_env(tracking_uri: str | None = None) -> dict[str, str]:
    """This process's environment for the server: this interpreter's bin folder first on PATH (MLflow starts
    `uvicorn` from PATH: without it a non-activated venv exits 127), MLFLOW_TRACKING_URI (`models:/` URIs resolve
    through it) and UVICORN_HTTP (ncood's request limits, ncood.serve.guard) unless already set."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.setdefault("UVICORN_HTTP", PROTOCOL)
    return env


def ping(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the group this function created: mlflow CLI + uvicorn
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


@contextlib.contextmanager
def local_server(model_uri: str, *, tracking_uri: str | None = None, port: int | None = None, workers: int = 1,
                 model_config: Mapping[str, Any] | None = None, extra_env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, start_timeout_s: float = 180.0) -> Iterator[str]:
    """Serve `model_uri` on http://127.0.0.1:<port> until the block exits; yields the base URL.

    model_config: ServingLimits overrides (passed as $NCOOD_SERVING_LIMITS). extra_env: more variables for the server
    (e.g. OMP_NUM_THREADS, the torch threads per worker). The server's output goes to log_path
    (default: a temporary file); its tail is in the error if the server dies or misses start_timeout_s.
    """
    port = port or free_port()
    env = serve_env(tracking_uri)
    if model_config:
        env[LIMITS_ENV] = json.dumps(dict(model_config))
    env.update(extra_env or {})
    tmp = None
    if log_path is None:
        tmp = tempfile.NamedTemporaryFile(prefix="ncood-server-", suffix=".log", delete=False)
        log_path = tmp.name
        tmp.close()
    log_path = Path(log_path)
    url = f"http://{LOOPBACK}:{port}"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(serve_args(model_uri, port, workers), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not ping(url):
            if proc.poll() is not None:
                raise RuntimeError(f"`mlflow models serve` exited with {proc.returncode}:\n"
                                   f"{log_path.read_text(errors='replace')[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not answering /ping after {start_timeout_s:.0f} s:\n"
                                   f"{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(log_path)
