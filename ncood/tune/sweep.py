"""Driver side of a sweep: Ray start-up, the MLflow parent run, the Tuner (or Tuner.restore), run statuses.

Order matters (docs/method.md#trap-mlflow): the MLflow database, experiment and parent run exist before any trial starts;
trials get absolute URIs and ids. After the Tuner returns no child run is left RUNNING: `SweepStatusCallback`
closes what a trial's own process could not (killed actor, ASHA stop, Ctrl+C), `tracking.close_orphans` checks.
"""
from __future__ import annotations

import importlib
import json
import re
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyarrow.fs as pafs
import ray
from ray import tune

from ncood import keys, runs_query, tracking
from ncood.tune.cluster import SqliteOnClusterCheck, init_ray, warn_if_sqlite_on_cluster
from ncood.tune.grid import config_from_tune, make_param_space, trial_dirname, trial_name
from ncood.tune.status import SweepStatusCallback, best_effort, close_runs
from ncood.tune.trainable import TrialRuntime
from ncood.tune.trial import train_trial

SWEEP_FILE = "ncood_sweep.json"  # in the Ray experiment dir: what `--resume` needs to reattach to MLflow


@dataclass
class SweepSettings:
    """How and where a sweep runs (not trial config): the run flags of tune_jobs/ablation.py and search.py."""

    experiment: str = keys.DEFAULT_EXPERIMENT  # MLflow experiment; the Ray experiment dir is <experiment>_<timestamp>
    tracking_uri: str | None = None  # default: tracking.default_tracking_uri()
    storage_path: str | None = None  # default: <repo>/runs/ray (~/ray_results inside a Ray job's working dir)
    cpus_per_trial: float = 1
    gpus_per_trial: float | None = None  # None: 1 if the cluster has a GPU, else 0; fractions share a GPU
    max_concurrent: int | None = None  # None: as many as the resources allow
    retries: int = 1  # retries from the last checkpoint before a trial counts as FAILED (flag --max-failures)
    checkpoint_every: int = 1
    keep_checkpoint_epochs: tuple[int, ...] = ()
    num_cpus: int | None = None  # CPUs of a local Ray (default: all); ignored on a cluster
    progress: bool = True  # Ray's progress table
    dashboard: bool = False  # start Ray's dashboard with a local Ray (--dashboard)


Trainable = Callable[[dict, TrialRuntime], None]  # (Ray config, runtime) -> None, reports through tune.report


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs (SweepSettings say how and where): the Ray param_space, the kind (tag keys.TAG_KIND), the
    trainable, and how the sweep shows in MLflow and in Ray's progress table."""

    param_space: Mapping[str, Any] = field(default_factory=dict)
    kind: str = keys.KIND_ABLATION
    trainable: Trainable = train_trial  # fn(config, runtime); the NC intervention passes its continuation trainable
    tune_extra: Mapping[str, Any] = field(default_factory=dict)  # TuneConfig args: search_alg, scheduler, metric, ...
    sweep_params: Mapping[str, Any] = field(default_factory=dict)  # MLflow params of the sweep (parent) run
    metric_columns: Mapping[str, str] = field(default_factory=dict)  # progress table: {metric key: column title}
    parameter_columns: Sequence[str] = ()  # progress table: config keys shown (default: seed)
    val_every_epoch: bool = False  # accuracy/val at every epoch (a search metric must be in every result)
    callbacks: Sequence[tune.Callback] = ()  # more Tune callbacks of the driver


@dataclass
class SweepResult:
    ref: tracking.SweepRef
    experiment_path: str  # the Ray experiment dir or URI: `--resume` takes it
    runs: list  # the MLflow child runs, after the run
    interrupted: bool
    num_trials: int  # Ray trials in the sweep
    num_errors: int  # Ray trials that ended in ERROR (some may have failed before creating an MLflow run)


def tune_keys(spec: SweepSpec) -> tuple[str, ...]:
    """The metric keys Tune is given (TrialRuntime.tune_result): the progress table's columns, the metric(s) that
    TuneConfig, the search algorithm or the scheduler optimize and the scheduler's time attribute (Ray keeps it in
    `_time_attr`; a missing key there would stop ASHA from deciding). MLflow gets every metric."""
    algs = [spec.tune_extra.get(k) for k in ("search_alg", "scheduler")]
    named = [spec.tune_extra.get("metric"),
             *(getattr(a, attr, None) for a in algs for attr in ("metric", "_time_attr"))]
    return tuple(dict.fromkeys([*spec.metric_columns, *(m for n in named for m in _names(n))]))


def _names(value: Any) -> list[str]:
    """A metric setting as a list of keys: one name, a list of names (multi-objective), or nothing (None)."""
    return [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str)]


def ablation_columns(space: Mapping[str, Any]) -> dict[str, str]:
    """The ablation's progress columns {metric key: title}: loss, test accuracy, GMM AUROC of the first OoD set."""
    ood = list(space.get("ood_sets") or [])
    return {keys.LOSS_TRAIN: "loss", keys.ACC_TEST: "test acc",
            **({keys.ood_key(ood[0], "gmm", "auroc"): f"AUROC {ood[0]}"} if ood else {})}


def default_storage_path() -> str:
    root = tracking.repo_root()
    return str(Path("~/ray_results").expanduser() if tracking.in_ray_job_copy(root) else root / "runs" / "ray")


class StorageError(FileNotFoundError):
    """--storage-path cannot be parsed or written (missing bucket, no credentials, unreachable endpoint)."""


@dataclass(frozen=True)
class Storage:
    """Where Ray Tune keeps a sweep: a local directory or a URI that pyarrow understands (s3://bucket/prefix,
    gs://..., with options such as ?endpoint_override=host:port&scheme=http for MinIO/Ceph; credentials from the
    usual AWS_* / GOOGLE_* environment). Ray gets (filesystem, path) for a URI and a plain path otherwise."""

    fs: pafs.FileSystem
    path: str  # the root, without scheme or query (what pyarrow and Ray's storage_filesystem expect)
    uri: str | None = None  # as given, for URIs; None for local directories

    @classmethod
    def parse(cls, where: str, flag: str = "--storage-path") -> Storage:
        """`where` as given to `flag` (named in the errors)."""
        if "://" in where:
            try:
                fs, path = pafs.FileSystem.from_uri(where)
            except (ValueError, OSError) as e:  # pyarrow.lib.ArrowInvalid is a ValueError
                raise StorageError(f"{flag} {where!r} is not a storage URI pyarrow can open: {e}") from e
            return cls(fs, path.rstrip("/"), where)
        local = tracking.outside_job_copy(  # e.g. a relative path in a job: its checkpoints would go with the copy
            Path(where).expanduser().resolve(), f"{flag} {where!r}", "Pass an absolute path every node sees (e.g. "
            "/mnt/ncood/ray) or a URI such as s3://BUCKET/prefix", StorageError)
        return cls(pafs.LocalFileSystem(), str(local))

    def check(self) -> None:
        """Create the root (a no-op for an existing bucket prefix): fail here, before any MLflow run exists."""
        try:
            self.fs.create_dir(self.path, recursive=True)
        except OSError as e:
            raise StorageError(
                f"cannot write the Ray storage {self.uri or self.path}: {e}. Fix --storage-path (for a bucket: "
                "does it exist, are credentials set (AWS_* variables or an instance role), is the endpoint right?)"
            ) from e

    @property
    def ray_filesystem(self) -> pafs.FileSystem | None:
        return self.fs if self.uri else None  # local: Ray's own default, as before

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def display(self, path: str) -> str:
        """A path under this storage as a URI that `--resume` takes (s3://bucket/prefix/...?options), or local."""
        if not self.uri:
            return path
        scheme, rest = self.uri.split("://", 1)
        query = rest.partition("?")[2]
        return f"{scheme}://{path}" + (f"?{query}" if query else "")

    def write_text(self, path: str, text: str) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(text.encode())

    def read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound


def find_experiment(storage: Storage, experiment: str, resume: str) -> tuple[Storage, str]:
    """`--resume PATH` -> PATH (a directory or URI); `--resume` alone -> the newest `<experiment>_*` sweep under the
    storage (names end in a %Y%m%d-%H%M%S start time and a random tag). Returns (its storage, its path there)."""
    if resume != "latest":
        storage = Storage.parse(resume, "--resume")  # Tuner.restore needs an absolute path
        path = storage.path
    else:
        listing = storage.fs.get_file_info(pafs.FileSelector(storage.path, allow_not_found=True))
        found = sorted(i.path for i in listing if i.type == pafs.FileType.Directory
                       and i.base_name.startswith(f"{experiment}_") and storage.exists(f"{i.path}/{SWEEP_FILE}"))
        if not found:
            raise FileNotFoundError(f"no sweep '{experiment}_*' to resume under {storage.uri or storage.path} "
                                    f"(pass --experiment and --storage-path as for the first run, or --resume PATH)")
        path = found[-1]
    if not storage.exists(f"{path}/{SWEEP_FILE}") or not tune.Tuner.can_restore(
            path, storage_filesystem=storage.ray_filesystem):
        raise FileNotFoundError(f"{storage.display(path)} is not a resumable ncood sweep "
                                f"(no {SWEEP_FILE} / Tune experiment state)")
    return storage, path


def _trainable_name(fn: Trainable) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def _trainable_from_name(name: str) -> Trainable:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _trainable(runtime: TrialRuntime, resources: Mapping[str, float], fn: Trainable = train_trial):
    return tune.with_resources(tune.with_parameters(fn, runtime=runtime), dict(resources))


class _Reporter(tune.CLIReporter):
    """Ray's progress table, with its "Result logdir:" line (Ray's session folder, .../driver_artifacts) replaced by
    the storage path the sweep really writes to (what --resume takes). The trial names carry the condition
    (`<condition>-s<seed>`, ncood.tune.grid.trial_name), so the table needs no condition column."""

    storage_line = ""  # set by run_sweep once the experiment dir is known

    def _print(self, msg: str) -> None:
        if self.storage_line:
            msg = re.sub(r"^Result logdir: .*$", self.storage_line, msg, flags=re.M)
        super()._print(msg)


def run_sweep(settings: SweepSettings, spec: SweepSpec | None = None, *, resume: str | None = None) -> SweepResult:
    """Run `spec` (or, with `resume`, continue a sweep) as one sweep: MLflow parent run, Ray Tuner, final status sweep.

    On resume, finished trials are kept, interrupted ones continue from their checkpoints and errored ones are
    retried from theirs (resume_errored), each in its own MLflow run; the sweep keeps its original settings and
    trainable (`spec` is not needed).
    """
    storage = Storage.parse(settings.storage_path or default_storage_path())
    storage.check()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new output ignores our CLIReporter's metric columns
    # num_to_keep=1 forces a (cheap, local) experiment snapshot per checkpoint; Tune warns about that each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        tuner, ref, storage, exp_dir = _restored_tuner(settings, *find_experiment(storage, settings.experiment, resume))
    else:
        tuner, ref, exp_dir = _new_tuner(settings, storage, spec or SweepSpec())
    try:
        tuner.fit()  # per-trial outcomes are read back from MLflow and the experiment state below
    except BaseException as e:  # the driver itself failed (or a second Ctrl+C skipped Tune's own shutdown)
        best_effort("close the runs of the sweep", lambda: tracking.close_orphans(ref, {}, interrupted=True))
        _close_sweep_run(ref, e)
        raise
    # A trial neither TERMINATED nor ERROR was cut off (Ctrl+C): the sweep can be resumed. Statuses come from the
    # experiment state Tune wrote last (a result's `done` flag is not reliable after a restore).
    trials = tune.ExperimentAnalysis(exp_dir, storage_filesystem=storage.ray_filesystem).trials
    statuses = [t.status for t in trials]
    interrupted = any(s not in ("TERMINATED", "ERROR") for s in statuses)
    try:
        close_runs(ref, trials, interrupted)  # normally a no-op: SweepStatusCallback did it
        runs = tracking.child_runs(ref)
        counts = {s.lower(): sum(r.info.status == s for r in runs)
                  for s in (tracking.FINISHED, tracking.FAILED, tracking.KILLED)}
        early = sum(r.info.status == tracking.FINISHED and runs_query.stopped_early(r) for r in runs)
        counts.update(finished=counts["finished"] - early, stopped_early=early)  # ASHA's stops are not full runs
        tracking.set_status(ref, ref.parent_run_id, tracking.KILLED if interrupted else tracking.FINISHED,
                            {f"trials_{s}": str(n) for s, n in counts.items()})
    except Exception as e:  # noqa: BLE001 - typically the tracking server is down
        raise tracking.TrackingError(
            f"the sweep's trials ended ({statuses.count('ERROR')} of {len(statuses)} in ERROR), but the tracking "
            f"store {ref.tracking_uri} cannot be written ({type(e).__name__}: {str(e).strip()[:300]}). Trials that "
            f"could not log keep their unlogged epochs in their Ray checkpoints. Once the store is back, finish "
            f"the sweep with: --resume {storage.display(exp_dir)}") from e
    return SweepResult(ref, storage.display(exp_dir), runs, interrupted, len(statuses), statuses.count("ERROR"))


def _close_sweep_run(ref: tracking.SweepRef, error: BaseException) -> None:
    """The sweep run of a driver that failed (KILLED for Ctrl+C), with the error in its `error` tag."""
    status = tracking.KILLED if isinstance(error, KeyboardInterrupt) else tracking.FAILED
    best_effort("close the sweep run", lambda: tracking.set_status(
        ref, ref.parent_run_id, status, {keys.TAG_ERROR: tracking.error_text(error)}))


def _say_if_not_the_first(uri: str, experiment_id: str, experiment: str, kind: str) -> None:
    """A second `make run` adds a sweep beside the first in the same experiment (nothing is overwritten in MLflow,
    but the aggregate report on disk, the headline view and @champion then follow the newest): say so before Ray
    starts, with the flags that do something else."""
    from mlflow.tracking import MlflowClient

    try:
        earlier = runs_query.sweeps(MlflowClient(uri), experiment_id, kind)  # oldest first
    except Exception:  # noqa: BLE001 - a notice only: the sweep's own first write reports a store problem
        return
    if earlier:
        print(f"ncood: experiment {experiment!r} already holds {len(earlier)} {kind} sweep(s) (newest: "
              f"{earlier[-1].info.run_name}); this one is added beside them. The aggregate report on disk (and, for "
              f"the ablation job, @champion) will follow the new sweep; the earlier ones stay in MLflow. To continue "
              f"an interrupted sweep instead: --resume <its Ray experiment dir>; to keep sweeps apart: --experiment "
              f"<name>.")


def _new_tuner(settings: SweepSettings, storage: Storage, spec: SweepSpec):
    """MLflow experiment + parent run, the sweep file for --resume, the Tuner. The run comes first, before Ray:
    no trial may race to create it (DB races), and its creation is the sweep's first write into the experiment,
    the one a shared server refuses to a user who may only read it (a one-line TrackingError, not a traceback
    after Ray's start-up)."""
    uri = tracking.resolve_tracking_uri(settings.tracking_uri)
    experiment_id = tracking.prepare_experiment(settings.experiment, uri)
    _say_if_not_the_first(uri, experiment_id, settings.experiment, spec.kind)
    # start time, then a random tag: two sweeps started in the same second must not share a Ray experiment dir
    name = f"{settings.experiment}_{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    exp_dir = storage.join(name)
    where = ("tracking_uri", "storage_path", "num_cpus", "progress", "dashboard")  # where and how it ran, not what ran
    params = {**spec.sweep_params, **{k: v for k, v in asdict(settings).items() if v is not None and k not in where}}
    ref = tracking.start_sweep(uri, experiment_id, name, params,
                               {keys.TAG_KIND: spec.kind, keys.TAG_RAY_EXPERIMENT: storage.display(exp_dir)})
    try:
        init_ray(settings.num_cpus, settings.dashboard)
        warn_if_sqlite_on_cluster(uri)
        gpus = settings.gpus_per_trial
        if gpus is None:  # the cluster's answer, once Ray runs: a param of its own
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            tracking.log_params(ref, ref.parent_run_id, {"gpus_per_trial": gpus})
    except BaseException as e:  # no Ray: nothing will run in this sweep run
        _close_sweep_run(ref, e)
        raise
    resources = {"cpu": settings.cpus_per_trial, "gpu": gpus}
    runtime = TrialRuntime(ref, settings.cpus_per_trial, settings.checkpoint_every,
                           tuple(settings.keep_checkpoint_epochs), spec.val_every_epoch, tune_keys(spec))
    storage.write_text(f"{exp_dir}/{SWEEP_FILE}", json.dumps({
        "sweep": ref.to_dict(), "runtime": {k: v for k, v in asdict(runtime).items() if k != "sweep"},
        "resources": resources, "kind": spec.kind, "trainable": _trainable_name(spec.trainable)}, indent=2))
    reporter = _Reporter(metric_columns=dict(spec.metric_columns),
                         parameter_columns=list(spec.parameter_columns) or ["seed"],
                         max_progress_rows=12, max_report_frequency=30)
    reporter.storage_line = f"Storage (Ray results; --resume takes it): {storage.display(exp_dir)}"
    tune_config = tune.TuneConfig(max_concurrent_trials=settings.max_concurrent, reuse_actors=True,
                                  trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
                                  **dict(spec.tune_extra))
    run_config = tune.RunConfig(
        name=name, callbacks=[SweepStatusCallback(ref), SqliteOnClusterCheck(uri), *spec.callbacks],
        storage_path=storage.path, storage_filesystem=storage.ray_filesystem,
        verbose=1 if settings.progress else 0, progress_reporter=reporter,
        failure_config=tune.FailureConfig(max_failures=settings.retries),  # Ray's keyword: retries from a checkpoint
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))  # the latest is all a resume needs
    tuner = tune.Tuner(_trainable(runtime, resources, spec.trainable), param_space=dict(spec.param_space),
                       tune_config=tune_config, run_config=run_config)
    return tuner, ref, exp_dir


def _restored_tuner(settings: SweepSettings, storage: Storage, exp_dir: str):
    """Tuner.restore with the sweep's own trainable settings; its MLflow parent run is RUNNING again."""
    saved = json.loads(storage.read_text(f"{exp_dir}/{SWEEP_FILE}"))
    ref = tracking.SweepRef(**saved["sweep"])
    runtime = TrialRuntime(ref, **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["runtime"].items()})
    init_ray(settings.num_cpus, settings.dashboard)
    warn_if_sqlite_on_cluster(ref.tracking_uri)
    try:
        tracking.set_status(ref, ref.parent_run_id, tracking.ACTIVE)
    except Exception as e:  # noqa: BLE001 - nothing has run yet: say what to fix
        raise tracking.TrackingError(f"cannot resume: the sweep's tracking store {ref.tracking_uri} cannot be "
                                     f"written ({type(e).__name__}: {str(e).strip()[:300]}); is it up?") from e
    # resume_errored: failed trials get another go from their last checkpoint; restart_errored would drop it.
    fn = _trainable_from_name(saved.get("trainable", _trainable_name(train_trial)))
    tuner = tune.Tuner.restore(exp_dir, _trainable(runtime, saved["resources"], fn), resume_unfinished=True,
                               resume_errored=True, restart_errored=False, storage_filesystem=storage.ray_filesystem)
    return tuner, ref, storage, exp_dir


def run_grid(preset: str = "default", overrides: Mapping[str, Any] | None = None,
             seeds: int | Sequence[int] | None = None, settings: SweepSettings | None = None, *,
             resume: str | None = None, callbacks: Sequence[tune.Callback] = ()) -> SweepResult:
    """The ablation: `make_param_space(preset, overrides, seeds)` run as one sweep (see run_sweep)."""
    settings = settings or SweepSettings(experiment=f"ablation-{preset}")
    if resume:
        return run_sweep(settings, resume=resume)
    space = make_param_space(preset, overrides, seeds)
    conditions = space["condition"]["grid_search"]
    seed_list = space["seed"]["grid_search"]
    columns = ablation_columns(space)
    params = {"preset": preset, "seeds": len(seed_list), "trials": len(conditions) * len(seed_list),
              "conditions": [config_from_tune({**space, "condition": c, "seed": 0}).condition for c in conditions],
              **{f"override.{k}": v for k, v in (overrides or {}).items()}}
    return run_sweep(settings, SweepSpec(space, keys.KIND_ABLATION, sweep_params=params, metric_columns=columns,
                                         callbacks=callbacks))
