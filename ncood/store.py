"""The MLflow tracking store of ncood's jobs: which store, its creation, the experiment, and a server's refusals.

- Store: `sqlite:///<repo>/mlruns/mlflow.db`, artifacts in `<repo>/mlruns/artifacts/<experiment>`, both absolute
  (Ray trials run in temporary working dirs); `--tracking-uri` or MLFLOW_TRACKING_URI override it. Concurrent
  writers (every trial of one or several sweeps): the database is in WAL mode (set once, persistent in the file);
  the busy timeout is MLflow 3.17's own (`PRAGMA busy_timeout = 20000` on every session it opens,
  mlflow/store/db/utils.py), so a writer waits up to 20 s for the lock. sqlite is for one machine
  (ncood.tune.cluster warns on a multi-node cluster); a cluster uses the server in deploy/.
- Inside `ray job submit --working-dir` the job runs in a copy that Ray deletes when the job ends: a store that
  would resolve into it (the default, or a relative path) is refused with the fix.
- A shared server with basic auth (deploy/) lets every user read every experiment but write only their own:
  `permission_denied` recognizes its refusal, `refusal` words it for the one-line errors the commands print.
Split from ncood.tracking (which re-exports these names) to keep each module short.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
from pathlib import Path
from typing import Iterator

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


class TrackingError(RuntimeError):
    """The tracking store cannot be used as asked; the message says how to fix it."""


def repo_root() -> Path:
    """The source checkout (folder with pyproject.toml above the ncood package), else the current directory."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() else Path.cwd().resolve()


def in_ray_job_copy(path: Path | None = None) -> bool:
    """True inside `ray job submit --working-dir` (an unpacked copy that Ray deletes when the job ends)."""
    return "runtime_resources" in (path or repo_root()).parts


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else sqlite:///<repo>/mlruns/mlflow.db (absolute)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return resolve_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    if in_ray_job_copy():
        raise TrackingError(
            "running inside a Ray job's temporary working-dir copy: the default store (its mlruns/) would be deleted "
            "with the job. Pass --tracking-uri sqlite:////ABS/PATH/mlruns/mlflow.db (a path on the head node) or an "
            "http://tracking-server URI, or set MLFLOW_TRACKING_URI in the job's runtime env."
        )
    return "sqlite:///" + str(repo_root() / "mlruns" / "mlflow.db")


def resolve_tracking_uri(uri: str | None) -> str:
    """Absolute tracking URI: sqlite paths are made absolute; a bare '*.db' path means sqlite; servers pass as is."""
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]  # 'sqlite:////abs/x.db' -> '/abs/x.db'; 'sqlite:///rel.db' -> 'rel.db'
        return "sqlite:///" + str(_lasting(uri, Path(path).expanduser().resolve()))
    if "://" not in uri:
        if uri.endswith(".db"):
            return "sqlite:///" + str(_lasting(uri, Path(uri).expanduser().resolve()))
        raise TrackingError(f"tracking URI {uri!r}: the file store is deprecated in MLflow 3; use a sqlite database "
                            f"(sqlite:////abs/path/mlflow.db or a path ending in .db) or an http(s):// server")
    return uri


def outside_job_copy(path: Path, what: str, fix: str, error: type[Exception] = TrackingError) -> Path:
    """`path` (absolute), unless it lies in a Ray job's working-dir copy: a relative path resolves against the job's
    cwd, the copy, which Ray deletes when the job ends, so the job would succeed and what it wrote there vanish.
    Then `error` naming `what` (e.g. "--out 'report'"), where it resolved and `fix`."""
    if in_ray_job_copy(path):
        raise error(f"{what} is {path}, inside this Ray job's temporary working-dir copy, which Ray deletes when the "
                    f"job ends. {fix}")
    return path


def lasting_folder(where: str | Path, flag: str) -> Path:
    """`where` as given to `flag`, made absolute and checked by outside_job_copy."""
    return outside_job_copy(Path(where).expanduser().resolve(), f"{flag} {str(where)!r}",
                            f"Pass an absolute path (e.g. ~/ray_results/aggregate or a shared folder), or leave {flag} "
                            f"out for the default")


def _lasting(uri: str, db: Path) -> Path:
    return outside_job_copy(db, f"tracking URI {uri!r}", "Pass --tracking-uri sqlite:////ABS/PATH/mlflow.db (an "
                            "absolute path on the head node) or an http(s):// tracking server")


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """sqlite stores keep artifacts beside the database (absolute); servers choose their own (None)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    return (Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts" / safe).as_uri()


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def existing_store(uri: str | None) -> str:
    """resolve_tracking_uri for commands that only read (register, aggregate): a sqlite file that is not there is a
    TrackingError, because MLflow would create it, empty, with its folders, and then find nothing in it."""
    uri = resolve_tracking_uri(uri)
    if (db := sqlite_path(uri)) is not None and not db.is_file():
        raise TrackingError(f"no MLflow store at {db}; pass --tracking-uri of the store the sweep logged to")
    return uri


# ---- a shared server's refusals ----------------------------------------------------------------------------------
def permission_denied(error: BaseException) -> bool:
    """A tracking server's HTTP 403: this login may read but not write the experiment or registered model (MLflow's
    basic-auth gives other users' objects `default_permission`, READ in deploy/). MLflow raises it as an
    MlflowException with error code PERMISSION_DENIED, from a JSON body or a plain 'Permission denied'."""
    return isinstance(error, MlflowException) and error.error_code == "PERMISSION_DENIED"


def refusal(tracking_uri: str, what: str) -> str:
    """'the tracking server <uri> refused to <what> for user <login> (permission denied)': the start of the
    one-line errors; each caller adds its own fix."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    return (f"the tracking server {tracking_uri} refused to {what}{f' for user {user}' if user else ''} "
            f"(permission denied)")


# ---- creating the store and the experiment ------------------------------------------------------------------------
@contextlib.contextmanager
def _exclusive(db: Path) -> Iterator[None]:
    """One process at a time (flock on `<db>.lock`): MLflow creates a new database's schema with migrations that
    fail when two processes run them at once (two sweeps started together on a fresh store)."""
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _use_wal(db: Path) -> None:
    """Write-ahead logging: readers never block the writer and commits are cheaper. Persistent in the file, so
    set once here; a no-op when it is on already. (The busy timeout is MLflow's own: 20 s on every session.)"""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode=WAL")


def prepare_experiment(name: str, tracking_uri: str) -> str:
    """Create (or find) the experiment on the driver, before any trial starts; returns its id. Safe when several
    drivers do it at once: a sqlite store is created under a file lock (and switched to WAL), and an experiment
    that another driver created in the meantime is found instead of failing."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return _get_or_create_experiment(MlflowClient(tracking_uri), name, tracking_uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(db):
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)  # the first access creates the schema
        _use_wal(db)
        return _get_or_create_experiment(client, name, tracking_uri)


def _get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri, name))
        except MlflowException as e:  # another driver created it between the lookup and here
            if e.error_code != "RESOURCE_ALREADY_EXISTS" or client.get_experiment_by_name(name) is None:
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage != "active":
        raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it in the UI, purge it with "
                            f"`mlflow gc --backend-store-uri {tracking_uri}`, or choose another --experiment")
    return exp.experiment_id
