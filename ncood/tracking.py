"""MLflow tracking for sweeps: the store, one parent run per sweep, one child run per trial.

Layout (docs/method.md#trap-mlflow has the traps this avoids):
- Store: ncood.store (re-exported here): `sqlite:///<repo>/mlruns/mlflow.db` unless `--tracking-uri` or
  MLFLOW_TRACKING_URI says otherwise, always absolute, never inside a Ray job's temporary working-dir copy.
- The driver creates the database, the experiment and the sweep's parent run before any trial starts: trials
  racing to create them fail (duplicate column / UNIQUE constraint). Trials receive a `SweepRef` (URI + ids).
- Each trial is a child run (`mlflow.parentRunId`) named `<condition>-s<seed>`, with every TrialConfig field as a
  param except the machine-local ones (MACHINE_FIELDS: tags), the effective LR milestones (param `lr_milestones`),
  each OoD score's hyperparameters (score/<name>/<field>), tags `condition`, `seed`, `ray_trial_id`, the driver's
  context tags (source, user, git: ncood.run_fields), dataset inputs, system metrics, and one `log_batch` per epoch
  (step = epoch). Only `MlflowClient` is used: the fluent API keeps a process-global active run, and with
  `reuse_actors` one Ray worker runs many trials in turn.
- A resumed trial continues its own run (the id lives in its Ray checkpoint; without one it is found by its Ray
  trial id). Each step is logged at most once, so a retry never duplicates a metric value.
Measurement modules never import this one (docs/architecture.md#dependencies): they return dicts, tracking logs them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

from ncood import keys, run_fields, runs_query

# The store's functions live in ncood.store; callers use them as ncood.tracking's, as before the split.
from ncood.store import (TrackingError, default_tracking_uri, existing_store, in_ray_job_copy,  # noqa: F401
                         lasting_folder, outside_job_copy, permission_denied, prepare_experiment, refusal,
                         repo_root, resolve_tracking_uri, sqlite_path)

# Tag names live in the schema module (ncood.keys); imported here because tracking writes them.
from ncood.keys import (ROLE_SWEEP, ROLE_TRIAL, TAG_CONDITION, TAG_ERROR, TAG_FAILURE_KIND, TAG_GIT_DIRTY,
                        TAG_KILLED_REASON, TAG_PREVIOUS_ERROR, TAG_PREVIOUS_FAILURE_KIND, TAG_RESTARTS, TAG_ROLE,
                        TAG_SEED, TAG_TRIAL_ID)

ACTIVE, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
# TrialConfig fields that say where a trial ran, not what it computed: run tags, not params (a param differing
# between machines would split the compare view); `device` is the resolved one (cpu / cuda).
MACHINE_FIELDS = keys.MACHINE_FIELDS
PARAM_MILESTONES = "lr_milestones"  # the effective LR x0.1 epochs (cfg.milestones; lr_steps=None means derived)


def git_state(root: Path | None = None) -> dict[str, str]:
    """Code version tags: `mlflow.source.git.commit` (HEAD) and `git_dirty` (uncommitted changes to tracked files).
    A Ray job's working-dir copy has no .git: there NCOOD_GIT_COMMIT (set it in the job's runtime env) is used."""
    env_sha = os.environ.get("NCOOD_GIT_COMMIT")
    try:
        cwd = str(root or repo_root())
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {MLFLOW_GIT_COMMIT: env_sha} if env_sha else {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {MLFLOW_GIT_COMMIT: sha.stdout.strip(), TAG_GIT_DIRTY: str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {MLFLOW_GIT_COMMIT: env_sha} if env_sha else {}


def executable(name: str) -> str:
    """How to call console script `name` (mlflow, ncood) of this Python environment in a printed command: the bare
    name when this shell's PATH finds exactly that one, else its absolute path (`make run` never activates .venv, so
    a bare `mlflow ui` would be 'command not found' or another installation's)."""
    mine = Path(sys.executable).parent / name
    if not mine.exists() or shutil.which(name) == str(mine):
        return name
    return str(mine)


def ui_command(tracking_uri: str, port: int = 5000, page: str = "") -> str:
    """How to open the MLflow UI on this store (at `page`, e.g. '#/experiments/1/runs', if given)."""
    if tracking_uri.startswith("sqlite:///"):
        return (f"{executable('mlflow')} ui --backend-store-uri {tracking_uri} --port {port}\n"
                f"  then open http://127.0.0.1:{port}/{page} (remote machine: ssh -L {port}:127.0.0.1:{port} <host> "
                f"first)")
    return f"open {tracking_uri.rstrip('/')}/{page} in a browser (tracking server)"


# ---- the sweep (parent run) --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRef:
    """Everything a trial needs to log into its sweep; plain strings, so it pickles to Ray workers and to JSON."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    git: Mapping[str, str] = field(default_factory=dict)  # the driver's git_state() and context tags: on every run

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "git": dict(self.git)}


def _param_value(v: Any) -> str:
    """Params are strings in MLflow; lists read 'a,b' so the compare view shows them alike in every run."""
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def start_sweep(tracking_uri: str, experiment_id: str, name: str, params: Mapping[str, Any],
                tags: Mapping[str, str]) -> SweepRef:
    """Create the sweep's parent run (driver only) and return the reference trials log under. This is the sweep's
    first write into the experiment: where a shared server refuses a user who may only read it (TrackingError)."""
    client = MlflowClient(tracking_uri)
    git = {**run_fields.context_tags(), **git_state()}  # mlflow.source.*, mlflow.user, git commit and dirty flag
    try:
        run = client.create_run(experiment_id, run_name=name, tags={TAG_ROLE: ROLE_SWEEP, **git, **tags})
    except MlflowException as e:
        if not permission_denied(e):
            raise
        exp = client.get_experiment(experiment_id).name
        raise TrackingError(f"{refusal(tracking_uri, f'create a run in experiment {exp!r}')}: it is another "
                            f"user's. Pass --experiment <a name of your own> (a new experiment is yours), or ask "
                            f"its owner for EDIT permission on {exp!r}") from None
    ref = SweepRef(tracking_uri, experiment_id, run.info.run_id, dict(git))
    log_params(ref, ref.parent_run_id, params)
    return ref


def log_params(ref: SweepRef, run_id: str, params: Mapping[str, Any]) -> None:
    client = MlflowClient(ref.tracking_uri)
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + MAX_PARAMS_TAGS_PER_BATCH])


def set_tags(ref: SweepRef, run_id: str, tags: Mapping[str, str]) -> None:
    MlflowClient(ref.tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def set_status(ref: SweepRef, run_id: str, status: str, tags: Mapping[str, str] | None = None) -> None:
    """Set a run's status (and tags). ACTIVE reopens it (a resumed sweep): its `error` and `failure_kind` become
    `previous_*`, as a restarted trial's do, since a run that ends FINISHED must not keep a stale error."""
    client = MlflowClient(ref.tracking_uri)
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, v)
    if status == ACTIVE:
        _keep_as_previous(client, client.get_run(run_id))
        client.update_run(run_id, status=ACTIVE)
    else:
        client.set_terminated(run_id, status)


def _keep_as_previous(client: MlflowClient, run, extra: Sequence[RunTag] = ()) -> None:
    """A run that runs again has recovered from its error: `error` -> `previous_error` and `failure_kind` ->
    `previous_failure_kind` (kept for the record, no longer the run's state); `extra` tags in the same batch."""
    tags = list(extra)
    for now, before in ((TAG_ERROR, TAG_PREVIOUS_ERROR), (TAG_FAILURE_KIND, TAG_PREVIOUS_FAILURE_KIND)):
        if now in run.data.tags:
            tags.append(RunTag(before, run.data.tags[now]))
            client.delete_tag(run.info.run_id, now)
    if tags:
        client.log_batch(run.info.run_id, tags=tags)


def now_ms() -> int:
    """MLflow's timestamp unit: milliseconds since the epoch."""
    return int(time.time() * 1000)


def child_runs(ref: SweepRef) -> list:
    """Every trial run of the sweep (all statuses), oldest first (not the aggregate run nested beside them)."""
    return runs_query.child_runs(MlflowClient(ref.tracking_uri), ref.experiment_id, ref.parent_run_id, keys.ROLE_TRIAL)


def trial_run(ref: SweepRef, trial_id: str):
    """The child run of Ray trial `trial_id` in this sweep, or None."""
    return runs_query.trial_run(MlflowClient(ref.tracking_uri), ref.experiment_id, ref.parent_run_id, trial_id)


def create_trial_run(ref: SweepRef, trial_id: str, run_name: str, tags: Mapping[str, str] | None = None) -> str:
    """A child run of the sweep for Ray trial `trial_id` (RUNNING); returns its id."""
    tags = {MLFLOW_PARENT_RUN_ID: ref.parent_run_id, TAG_ROLE: ROLE_TRIAL, TAG_TRIAL_ID: trial_id, **ref.git,
            **(tags or {})}
    return MlflowClient(ref.tracking_uri).create_run(ref.experiment_id, run_name=run_name, tags=tags).info.run_id


def close_orphans(ref: SweepRef, trial_errors: Mapping[str, str], interrupted: bool,
                  kinds: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Driver-side sweep once no trial runs: a child still RUNNING lost its process (killed actor, dead node,
    Ctrl+C, an unreachable store). It becomes FAILED (with the Ray error, and `kinds[trial id]` as its
    failure_kind) if its trial errored, else KILLED (a resume revives it). Returns [(run name, new status)]."""
    changed = []
    for run in child_runs(ref):
        if run.info.status != ACTIVE:
            continue
        tid = run.data.tags.get(TAG_TRIAL_ID, "")
        if tid in trial_errors:
            tags = {TAG_ERROR: truncate(trial_errors[tid])}
            if kinds and tid in kinds:
                tags[TAG_FAILURE_KIND] = kinds[tid]
            set_status(ref, run.info.run_id, FAILED, tags)
            changed.append((run.info.run_name, FAILED))
        else:
            note = "interrupted; resume with --resume" if interrupted else "trial process ended without closing its run"
            set_status(ref, run.info.run_id, KILLED, {TAG_KILLED_REASON: note})
            changed.append((run.info.run_name, KILLED))
    return changed


def truncate(text: str, limit: int = MAX_TAG_VAL_LENGTH - 100) -> str:
    """Keep the head (exception type and message) and the tail (innermost frames) of a long error text."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n...\n" + text[-half:]


def error_text(exc: BaseException) -> str:
    """'ExcType: message' then the traceback: what the `error` tag shows in the UI."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return truncate(f"{type(exc).__name__}: {exc}\n\n{tb}")


# ---- one trial (child run) ---------------------------------------------------------------------------------------
class TrialTracker:
    """The child run of one trial: create or resume, log params once, one batch per epoch, artifacts, status.

    cfg: the trial's TrialConfig (every field becomes a param). trial_id: Ray's trial id (stable across retries
    and `Tuner.restore`), used to find the run when no checkpoint carries its id.
    """

    def __init__(self, ref: SweepRef, cfg: Any, trial_id: str, run_name: str | None = None) -> None:
        self.ref, self.cfg, self.trial_id = ref, cfg, trial_id
        self.run_name = run_name or f"{cfg.condition}-s{cfg.seed}"
        self.client = MlflowClient(ref.tracking_uri)
        self.run_id: str | None = None
        self.monitor = None  # MLflow's SystemMetricsMonitor while the run is RUNNING (ncood.run_fields)
        self.last_step = 0  # highest epoch already logged: a resumed trial never logs a step twice

    def start(self, run_id: str | None = None) -> str:
        """Resume `run_id` (from the Ray checkpoint), else the run already tagged with this trial id, else create."""
        run_id = run_id or self._find_by_trial_id()
        if run_id is None:
            self.run_id = create_trial_run(self.ref, self.trial_id, self.run_name,
                                           {TAG_CONDITION: self.cfg.condition, TAG_SEED: str(self.cfg.seed),
                                            **{f: str(getattr(self.cfg, f)) for f in MACHINE_FIELDS}})
            self._log_params(set())
            self.monitor = run_fields.start_system_metrics(self.run_id, self.ref.tracking_uri, resume=False)
            return self.run_id
        self.run_id = run_id
        run = self.client.get_run(run_id)
        self._log_params(set(run.data.params))  # a crash right after create_run left none; values never change
        history = self.client.get_metric_history(run_id, keys.LOSS_TRAIN)  # logged every epoch
        self.last_step = max((m.step for m in history), default=0)
        restarts = int(run.data.tags.get(TAG_RESTARTS, "0")) + 1
        _keep_as_previous(self.client, run, [RunTag(TAG_RESTARTS, str(restarts)), RunTag(TAG_TRIAL_ID, self.trial_id)])
        self.client.update_run(run_id, status=ACTIVE)
        self.monitor = run_fields.start_system_metrics(run_id, self.ref.tracking_uri, resume=True)
        return run_id

    def _log_params(self, present: set[str]) -> None:
        """Every TrialConfig field but MACHINE_FIELDS, the effective milestones, and every OoD score's
        hyperparameters as score/<name>/<field> (ncood.ood)."""
        config = {k: v for k, v in self.cfg.to_dict().items() if k not in MACHINE_FIELDS}
        from ncood.ood import score_params  # here: ncood.ood imports torch, which a driver that only queries or
        # prepares the store does not need (seconds of start-up on 2 cores)

        values = {**config, PARAM_MILESTONES: list(self.cfg.milestones), **score_params()}
        params = [Param(k, _param_value(v)) for k, v in values.items() if k not in present]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])

    def finished_metrics(self, run_id: str | None = None) -> dict[str, float] | None:
        """The final metrics if this trial's run is already FINISHED, else None.

        A trial marks its run FINISHED just before its last `tune.report`; a Ctrl+C between the two leaves Ray
        thinking the trial unfinished, and `--resume` would start it again. The trainable checks this first."""
        run_id = run_id or self._find_by_trial_id()
        if run_id is None:
            return None
        run = self.client.get_run(run_id)
        return dict(run.data.metrics) if run.info.status == FINISHED else None

    def _find_by_trial_id(self) -> str | None:
        run = trial_run(self.ref, self.trial_id)
        return run.info.run_id if run else None

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """One batched write of the epoch's metric dict at step=epoch; False if this step was logged before."""
        if epoch <= self.last_step:
            return False
        self.log_metrics(epoch, metrics, int(time.time() * 1000))
        return True

    def log_metrics(self, step: int, metrics: Mapping[str, float], timestamp_ms: int) -> None:
        """Write `metrics` at `step`. Sending the same entry again is a no-op in MLflow's store (a metric is stored
        once per key, step, timestamp and value): ncood.tune.outbox relies on that."""
        self.log_epochs([(step, metrics, timestamp_ms)])

    def log_epochs(self, entries: Sequence[tuple[int, Mapping[str, float], int]]) -> None:
        """Write several epochs [(step, metrics, timestamp_ms)] in as few log_batch calls as MLflow's 1000-metric cap
        allows (one sqlite transaction or HTTP request each, whatever the number of epochs)."""
        items = [Metric(k, float(v), ts, step) for step, metrics, ts in entries for k, v in metrics.items()]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + MAX_METRICS_PER_BATCH])
        self.last_step = max([self.last_step, *(step for step, _, _ in entries)])

    def log_inputs(self, data: Any, ood_sets: Mapping[str, Any]) -> None:
        """The trial's datasets as MLflow dataset inputs (ncood.run_fields.dataset_inputs); data: IDData."""
        run_fields.log_dataset_inputs(self.client, self.run_id, self.cfg, data, ood_sets)

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        for p in paths:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            monitor, self.monitor = self.monitor, None
            run_fields.stop_system_metrics(monitor)

    def finish(self) -> None:
        self.stop_monitor()
        self.client.set_terminated(self.run_id, FINISHED)

    def fail(self, exc: BaseException, kind: str | None = None) -> None:
        """FAILED with the error in the `error` tag (and `kind` in failure_kind); never raises (the original error
        matters more)."""
        if self.run_id is None:
            return
        try:
            self.stop_monitor()
            tags = {TAG_ERROR: error_text(exc), **({TAG_FAILURE_KIND: kind} if kind else {})}
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(self.run_id, FAILED)
        except Exception:  # noqa: BLE001 - the store may be what failed
            pass
