"""The Ray cluster a sweep runs on: starting or joining it, and the guard rail for its tracking store.

A sqlite tracking store is one file. On one machine that is fine (WAL journal, busy timeout: ncood.tracking). On a
cluster of several nodes it is not: a file on the head's disk is invisible to trials on other nodes, and one on a
network file system breaks SQLite's locking (NFS does not honour it reliably, and WAL needs shared memory on one
host), so concurrent trials on several nodes corrupt or lock the database. The shared MLflow server in deploy/
(PostgreSQL behind `mlflow server`) is the store for a cluster. ncood warns, and goes on, when a sweep with a
sqlite store finds more than one node: at the start, and when an autoscaled node joins later (a trial starts).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import ray
from ray import tune

from ncood.tune.worker_memory import WORKER_ENV


PRESTART_ENV = "RAY_prestart_worker_first_driver"  # Ray's switch (ray_config_def.h) for the workers it prestarts


class SqliteOnClusterWarning(UserWarning):
    """A sqlite tracking store on a Ray cluster with more than one node."""


def init_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Attach to a cluster only when asked (RAY_ADDRESS: `ray job submit` sets it); otherwise start a private local
    Ray, never a stray cluster that happens to run on this machine (plain `ray.init()` would join it). The job's
    workers get ncood.tune.worker_memory.WORKER_ENV (merged into the job's runtime env by Ray) unless this
    process's environment, i.e. the node's or the job's, already sets those variables. dashboard: start Ray's
    dashboard with the local Ray (off by default: it costs a few processes; a cluster has its own)."""
    if ray.is_initialized():
        return
    env_vars = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env)
        return
    # Local workers inherit this environment: make the ncood source importable there even without `pip install`.
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the ncood package
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *[p for p in paths if p != src]])
    # The raylet we start reads its settings from RAY_<name> variables. By default it starts num_cpus Python
    # workers when this driver registers; Tune's trial actors never ran on them (measured, Ray 2.60: they stay
    # `ray::IDLE` beside the trials' own workers), so each cost ~0.6 s of CPU for its imports and nothing else.
    # Set for the processes ray.init starts, then taken back: later children of this process (a `ray start`, say)
    # get Ray's default. A value the user set is kept.
    own_prestart = PRESTART_ENV not in os.environ
    os.environ.setdefault(PRESTART_ENV, "0")
    try:
        # with the dashboard, Ray's own start-up line names its URL ("View the dashboard at http://127.0.0.1:8265")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, runtime_env=runtime_env)
    finally:
        if own_prestart:
            os.environ.pop(PRESTART_ENV, None)


def alive_nodes() -> int:
    """Nodes of the connected Ray cluster that are alive now."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def sqlite_on_cluster_message(tracking_uri: str, nodes: int) -> str | None:
    """The warning for a sqlite store on `nodes` nodes, or None when there is nothing to warn about."""
    if nodes <= 1 or not tracking_uri.startswith("sqlite:"):
        return None
    return (
        f"the tracking store {tracking_uri} is a sqlite file, but this Ray cluster has {nodes} nodes. Trials on "
        f"other nodes cannot see a file on this node's disk, and sqlite on a network file system (NFS) is not safe "
        f"for writers on several machines (its locks do not hold there): runs get lost, locked or corrupted. Use the "
        f"shared MLflow tracking server from deploy/ (deploy/README.md, step 1: PostgreSQL + `mlflow server`, "
        f"deploy/mlflow/start-server.sh): pass --tracking-uri https://<server> or set MLFLOW_TRACKING_URI, with "
        f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD on every node (deploy/ray/node.env.example)."
    )


def warn_if_sqlite_on_cluster(tracking_uri: str) -> bool:
    """Warn (SqliteOnClusterWarning, printed on stderr) if the connected cluster has several nodes and the store
    is sqlite; returns whether it warned."""
    message = sqlite_on_cluster_message(tracking_uri, alive_nodes())
    if message:
        warnings.warn(message, SqliteOnClusterWarning, stacklevel=2)
    return message is not None


class SqliteOnClusterCheck(tune.Callback):
    """Repeats the check when a trial starts, once: an autoscaled cluster has no worker node at the sweep's start."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.warned = False

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if not self.warned and self.tracking_uri.startswith("sqlite:"):
            self.warned = warn_if_sqlite_on_cluster(self.tracking_uri)
