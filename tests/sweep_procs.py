"""tune_jobs/ablation.py as a separate process (its own driver and local Ray), for tests that need several drivers
at once, a driver that outlives a tracking server, or a worker to kill: the command, its environment, and the
Ray worker processes it started."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def sweep_command(tracking_uri: str, storage: Path, experiment: str, *flags: str) -> list[str]:
    """A tiny ablation job (width 2 on digits, the cheap `noise` OoD set, no progress table, no aggregation);
    `flags` add to or override these (argparse: the last value wins)."""
    return [sys.executable, str(REPO / "tune_jobs" / "ablation.py"), "--seeds", "1", "--l2", "off", "on",
            "--epochs", "2", "--width", "2", "--ood-sets", "noise", "--experiment", experiment,
            "--tracking-uri", tracking_uri, "--storage-path", str(storage), "--quiet", "--no-aggregate", *flags]


def logged_steps(epochs: int) -> tuple[list[int], list[int]]:
    """(every epoch, the full-evaluation epochs) of a trial of sweep_command's preset ("default": NC metrics every
    epoch, OoD scores every eval_every epochs and at the last): each metric key is logged at exactly one of them."""
    from ncood.train import every_epochs
    from ncood.tune.grid import GRIDS

    due = every_epochs(GRIDS["default"].fixed["eval_every"], epochs)
    return list(range(1, epochs + 1)), [e for e in range(1, epochs + 1) if due(e)]


def job_env(**extra: str) -> dict[str, str]:
    """This environment without a Ray address or tracking URI of its own, ncood importable, one torch thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def ray_workers(job_pid: int, title: str) -> list[psutil.Process]:
    """Processes under the job (its local Ray's raylet starts the workers) whose title starts with `title`; Ray
    titles a worker `ray::<class>.<method>` while it runs that method, e.g. `ray::ImplicitFunc.train`."""
    found = []
    for proc in psutil.Process(job_pid).children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith(title):
                found.append(proc)
        except psutil.Error:  # gone meanwhile
            pass
    return found


def stop_tree(proc) -> None:
    """SIGKILL a job that is still running and everything it started (its local Ray: gcs, raylet, workers)."""
    if proc.poll() is not None:
        return
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        family = []
    for p in family:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait(timeout=30)


def stop_group(proc, grace_s: float = 20) -> None:
    """SIGTERM the process group a server was started in (start_new_session=True); after `grace_s` s, or as soon as
    its leader is gone, SIGKILL what is left of the group (workers that outlived the leader, or a hung leader)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
