"""The real MLflow UI in headless Chromium, for tests/test_browser.py and docs/make_screenshots.py.

`mlflow ui` (MLflow's own server and React app) on a free loopback port; Chromium (Debian's `chromium`, installed with
apt-get when missing and this process is root) loads a page, lets the app run for a virtual-time budget, and returns
the DOM (`--dump-dom`) or writes a PNG (`--screenshot`). Python only: no CDP driver is needed for these two.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator
from sweep_procs import stop_group

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium(install: bool = True) -> str | None:
    """Path of the chromium binary; installs Debian's package with apt-get if missing (root only); None if absent."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], env=env,
                   capture_output=True, timeout=1200)
    return shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, start_timeout_s: float = 180) -> Iterator[str]:
    """`mlflow ui --backend-store-uri <uri>` on 127.0.0.1:<free port> until the block exits; yields the base URL."""
    port = _free_port()
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log = tempfile.NamedTemporaryFile(prefix="mlflow-ui-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not start:\n{Path(log.name).read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc, grace_s=20)
        log.close()
        os.unlink(log.name)


def _chromium(binary: str, url: str, extra: list[str], budget_ms: int, timeout_s: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra,
                               f"--virtual-time-budget={budget_ms}", url],
                              capture_output=True, text=True, timeout=timeout_s)


def dump_dom(binary: str, url: str, budget_ms: int = 20000, timeout_s: float = 180,
             size: tuple[int, int] = (1600, 1000)) -> str:
    """The page's DOM after `budget_ms` of virtual time (the React app has fetched and rendered by then). The runs
    table renders only the columns inside the window: a wide `size` puts them all in the DOM."""
    proc = _chromium(binary, url, ["--dump-dom", f"--window-size={size[0]},{size[1]}"], budget_ms, timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def screenshot(binary: str, url: str, out: Path, size: tuple[int, int] = (1600, 1000), budget_ms: int = 20000,
               timeout_s: float = 180) -> Path:
    """A PNG of the page after `budget_ms` of virtual time."""
    out = Path(out).resolve()
    proc = _chromium(binary, url, [f"--screenshot={out}", f"--window-size={size[0]},{size[1]}"], budget_ms,
                     timeout_s)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return out
