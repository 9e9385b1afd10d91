"""The processes tests/test_deploy.py starts from deploy/: PostgreSQL's binaries, the tracking server of
deploy/mlflow/start-server.sh as a process group, and the probes and clean-up around them."""
from __future__ import annotations

import base64
import importlib.util  # find_spec
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweep_procs import stop_group

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def require_server_deps() -> None:
    """The server's PostgreSQL driver and the basic-auth app's Flask-WTF (pyproject's dev extra)."""
    missing = [m for m in ("psycopg", "flask_wtf") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"the tracking server needs {missing}: pip install 'psycopg[binary]>=3.1' 'Flask-WTF<2'")


def postgres_bindir() -> Path:
    """deploy/mlflow/install-postgres.sh: the server binaries' folder, installing them with apt-get if needed."""
    out = subprocess.run(["bash", str(DEPLOY / "mlflow" / "install-postgres.sh")], capture_output=True, text=True,
                         timeout=900)
    if out.returncode == 3 and os.geteuid() != 0:
        pytest.skip(f"PostgreSQL is not installed and installing it needs root: {out.stderr.strip()}")
    assert out.returncode == 0, f"install-postgres.sh failed:\n{out.stdout[-2000:]}{out.stderr[-4000:]}"
    return Path(out.stdout.strip().splitlines()[-1])


def log_tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:  # gone meanwhile
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore").replace("\0", " ")
    except OSError:
        return ""


@dataclass(frozen=True)
class Postgres:
    port: int
    password: str  # of the `mlflow` role
    socket_dir: Path  # the cluster's folder (owned by its owner): its socket, where the superuser logs in (trust)
    as_owner: tuple[str, ...]  # prefix that runs a command as the cluster's owner: runuser as root, else nothing
    bindir: Path


@dataclass
class Server:
    """deploy/mlflow/start-server.sh as a process group of ours; `stop` and `start` again (an outage) keep the
    address, the store and the settings."""

    uri: str
    admin_password: str
    artifacts: Path
    log: Path
    env: dict
    proc: subprocess.Popen | None = None

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 150) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["bash", str(DEPLOY / "mlflow" / "start-server.sh")], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while self.proc.poll() is None and http_status(f"{self.uri}/health") != 200:
            assert time.time() < deadline, f"tracking server not up after {timeout:.0f} s:\n{log_tail(self.log)}"
            time.sleep(1)
        assert self.proc.poll() is None, f"start-server.sh exited with {self.proc.returncode}:\n{log_tail(self.log)}"

    def stop(self, grace: float = 15) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc, grace)


def http_status(url: str, auth: tuple[str, str] | None = None, host: str | None = None) -> int:
    """HTTP status of a GET (basic auth, a Host header other than the URL's, if given); -1 when nothing answers."""
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1


def kill_leftovers(marker: str) -> None:
    """SIGKILL any process still running from our Ray temp dir (ours alone: the path is unique)."""
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and marker in cmdline(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        except OSError:  # gone meanwhile
            pass
