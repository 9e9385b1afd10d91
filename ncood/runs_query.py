"""Reading ncood's runs back from MLflow: the one module that searches runs.

Tracking (a trial's own run), aggregation (a sweep's trial runs), serving (the finished trials to register) and
the NC intervention (its source runs and their kept checkpoints) all ask the same few questions, answered here:

    experiment(client, name)              the experiment by name (or id), with a clear error when missing
    newest_sweep(client, exp_id, kind)    the newest sweep (parent) run, optionally of one kind (keys.KIND_*)
    child_runs(client, exp_id, parent)    the runs of one sweep, oldest first (all statuses)
    trial_run(client, exp_id, parent, t)  the run of one Ray trial
    finished_trials(client, exp_id)       every FINISHED trial run of an experiment, newest first
    stopped_early(run)                    whether ASHA stopped the trial before its last epoch (FINISHED all the same)
    checkpoint_epochs(client, run_id)     the checkpoints a run kept ({epoch: artifact path})
    find_sources(client, exp, epoch)      the NC intervention's source runs and the checkpoints it restores

Only `MlflowClient.search_runs` is used, paged (`search_all`): the fluent `mlflow.search_runs` reads the
process-global tracking URI and its pandas frame drops the metric steps aggregation needs. Tag names are the
schema's (ncood.keys); a run's params become a TrialConfig with ncood.config.config_from_params.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from mlflow.entities import RunStatus, ViewType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ncood import keys
from ncood.config import config_from_params

PAGE = 1000  # runs per search_runs page (MLflow's cap on a SQL store is 50000; servers may cap lower)
CHECKPOINT_DIR = "checkpoints"  # ncood.tune.trial.EpochReporter logs kept checkpoints as checkpoints/epoch_NNN.pt
_CHECKPOINT = re.compile(r"epoch_(\d+)\.pt$")
_FINISHED = RunStatus.to_string(RunStatus.FINISHED)
NEWEST, OLDEST = "attributes.start_time DESC", "attributes.start_time ASC"


class RunsQueryError(LookupError):
    """What was asked for is not in the store; the message names what is there and what to pass instead."""


def tag_is(tag: str, value: str) -> str:
    """A search_runs filter clause: tags.`tag` = 'value'."""
    return f"tags.`{tag}` = '{value}'"


def search_all(client: MlflowClient, experiment_ids: Sequence[str], filter_string: str = "",
               order_by: str = OLDEST) -> list:
    """Every active run matching `filter_string` (all pages), ordered by `order_by`."""
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string, ViewType.ACTIVE_ONLY, max_results=PAGE,
                                  order_by=[order_by], page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def search_first(client: MlflowClient, experiment_ids: Sequence[str], filter_string: str,
                 order_by: str = NEWEST):
    """The first active run matching `filter_string` in `order_by` order, or None."""
    runs = client.search_runs(list(experiment_ids), filter_string, ViewType.ACTIVE_ONLY, max_results=1,
                              order_by=[order_by])
    return runs[0] if runs else None


def experiment(client: MlflowClient, name: str, *, by_id: bool = False):
    """The experiment named `name` (or, with by_id, whose id is `name`); RunsQueryError listing the experiments of
    the store when there is none."""
    exp = client.get_experiment_by_name(name)
    if exp is None and by_id and name.isdigit():
        try:
            exp = client.get_experiment(name)
        except Exception:  # noqa: BLE001 - MlflowException for an unknown id
            exp = None
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise RunsQueryError(f"no MLflow experiment {name!r} in {client.tracking_uri}; experiments there: "
                             f"{names or 'none'} (pass --experiment NAME and the --tracking-uri the sweep logged to)")
    return exp


def _sweep_filter(kind: str | None) -> str:
    return tag_is(keys.TAG_ROLE, keys.ROLE_SWEEP) + (f" and {tag_is(keys.TAG_KIND, kind)}" if kind else "")


def newest_sweep(client: MlflowClient, experiment_id: str, kind: str | None = None):
    """The newest sweep (parent) run of the experiment, of `kind` (keys.KIND_*) if given; None if there is none."""
    return search_first(client, [experiment_id], _sweep_filter(kind))


def sweeps(client: MlflowClient, experiment_id: str, kind: str | None = None) -> list:
    """Every sweep (parent) run of the experiment, of `kind` if given, oldest first."""
    return search_all(client, [experiment_id], _sweep_filter(kind))


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, role: str | None = None) -> list:
    """The runs of one sweep (every status), oldest first; with `role` (keys.ROLE_*) only those."""
    flt = tag_is(MLFLOW_PARENT_RUN_ID, parent_run_id) + (f" and {tag_is(keys.TAG_ROLE, role)}" if role else "")
    return search_all(client, [experiment_id], flt)


def trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str):
    """The run of Ray trial `trial_id` in sweep `parent_run_id`, or None."""
    flt = f"{tag_is(MLFLOW_PARENT_RUN_ID, parent_run_id)} and {tag_is(keys.TAG_TRIAL_ID, trial_id)}"
    return search_first(client, [experiment_id], flt)


def finished_trials(client: MlflowClient, experiment_id: str) -> list:
    """Every FINISHED trial run of the experiment (any sweep), newest first."""
    flt = f"{tag_is(keys.TAG_ROLE, keys.ROLE_TRIAL)} and attributes.status = '{_FINISHED}'"
    return search_all(client, [experiment_id], flt, NEWEST)


def stopped_early(run) -> bool:
    """A FINISHED trial run that ASHA (tune_jobs/search.py) stopped before its last epoch: not a full run, so it is
    neither counted as finished nor averaged or registered with the full ones."""
    return keys.TAG_STOPPED_EARLY in run.data.tags


def checkpoint_epochs(client: MlflowClient, run_id: str) -> dict[int, str]:
    """{epoch: artifact path} of the run's kept checkpoints (checkpoints/epoch_NNN.pt)."""
    out = {}
    for f in client.list_artifacts(run_id, CHECKPOINT_DIR):
        m = _CHECKPOINT.search(f.path)
        if m:
            out[int(m.group(1))] = f.path
    return out


# ---- the NC intervention's sources -----------------------------------------------------------------------------------
def find_sources(client: MlflowClient, experiment_name: str, from_epoch: int, *, sweep_run_id: str | None = None,
                 condition: str | None = None, seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The finished no-L2 trial runs of the newest ablation sweep of `experiment_name` (or `sweep_run_id`), one
    condition (`condition`, or the only no-L2 one), each with its kept checkpoint at `from_epoch` or the latest one
    before it: [{run_id, run_name, seed, condition, config (TrialConfig.to_dict), checkpoint, onset, requested}],
    by seed. What ncood.tune.intervention continues (seed paper Sec. 4.2)."""
    exp = experiment(client, experiment_name)
    if sweep_run_id is None:
        sweep = newest_sweep(client, exp.experiment_id, keys.KIND_ABLATION)
        if sweep is None:
            raise RunsQueryError(f"experiment {experiment_name!r} holds no ablation sweep run; run "
                                 f"tune_jobs/ablation.py first (or pass --experiment and --tracking-uri as it used)")
        sweep_run_id = sweep.info.run_id
    runs = [r for r in child_runs(client, exp.experiment_id, sweep_run_id, keys.ROLE_TRIAL)
            if r.info.status == _FINISHED and r.data.params.get("l2") == "False"]
    conditions = sorted({r.data.tags.get(keys.TAG_CONDITION, "?") for r in runs})
    if condition is None:
        if len(conditions) != 1:
            raise RunsQueryError(f"sweep {sweep_run_id}: {len(conditions)} finished no-L2 conditions {conditions}; "
                                 f"choose one with --condition")
        condition = conditions[0]
    runs = [r for r in runs if r.data.tags.get(keys.TAG_CONDITION) == condition]
    if seeds is not None:
        runs = [r for r in runs if int(r.data.tags.get(keys.TAG_SEED, -1)) in set(seeds)]
    if not runs:
        raise RunsQueryError(f"sweep {sweep_run_id}: no finished no-L2 runs of condition {condition!r} "
                             f"(found conditions {conditions})")
    sources = []
    for r in sorted(runs, key=lambda r: int(r.data.tags.get(keys.TAG_SEED, 0))):
        kept = {e: p for e, p in checkpoint_epochs(client, r.info.run_id).items() if e <= from_epoch}
        if not kept:
            raise RunsQueryError(f"run {r.info.run_name} ({r.info.run_id}) kept no checkpoint at or before epoch "
                                 f"{from_epoch}; rerun the ablation with --keep-checkpoint-epochs {from_epoch}")
        onset = max(kept)
        # where the data lives is a tag (keys.MACHINE_FIELDS); the device is chosen again for the continuation
        machine = {k: r.data.tags[k] for k in ("data_root", "download") if k in r.data.tags}
        cfg = config_from_params({**r.data.params, **machine})
        sources.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "seed": cfg.seed,
                        "condition": condition, "config": cfg.to_dict(), "checkpoint": kept[onset], "onset": onset,
                        "requested": from_epoch})
    return sources
