"""Read one sweep out of MLflow into pandas: the sweep (parent) run, its trial (child) runs with their final-epoch
metric values, the per-condition seed accounting, and per-epoch metric curves.

Schema read (written by ncood.tracking / ncood.tune): the sweep run carries tag `ncood.role`=`sweep` and params
`seeds` (seeds per condition) and `conditions` (comma-separated condition names); each trial run carries
`mlflow.parentRunId`, `ncood.role`=`trial`, tags `condition` and `seed`, every TrialConfig field as a param, and
metrics per epoch (step = epoch, keys from ncood.keys). A FAILED run carries the `error` tag.

"Final epoch" value of a metric = its value at the run's last logged step (the highest step of any of its
metrics). MLflow's "latest" metric value is the one with the highest step (then timestamp), and its step is read
back from the run (`RunData.to_proto()`): a metric whose latest step is below the run's last step was not measured
at the final epoch, so it counts as missing there (never silently taken from an earlier epoch).

Runs are read through ncood.runs_query (paged `MlflowClient.search_runs`: its runs keep the metric steps that the
check above needs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from ncood import keys, runs_query, tracking
from ncood.config import CONDITION_FIELDS, FIELD_KINDS, parse_field

USED, FAILED, INCOMPLETE, DUPLICATE = "used", "failed", "incomplete", "duplicate"  # `use` column values

_META = ("run_id", "run_name", "status", "start_time", "condition", "seed", "final_step", "use", "error")
# Typed config columns of every run row: the condition fields, and the dataset (one per sweep, so not part of the
# condition name; the published-numbers comparison needs it).
RUN_FIELDS = ("dataset", *CONDITION_FIELDS)


class AggregateError(RuntimeError):
    """The sweep cannot be aggregated as asked; the message says why and what to pass instead."""


@dataclass(frozen=True)
class SweepInfo:
    """The sweep (parent) run being aggregated."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    run_id: str
    run_name: str
    kind: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class SweepData:
    """A sweep's trial runs. `runs`: one row per child run (every status) with columns `_META`, the condition fields
    (typed) and one column per metric key holding its final-epoch value (NaN where missing at the final epoch)."""

    sweep: SweepInfo
    runs: pd.DataFrame
    conditions: list[str]  # expected conditions (sweep params) first, then any others found, in grid order
    expected_seeds: list[int]
    ood_sets: list[str]  # in the trials' configured order: ood_sets[0] is "the first OoD set"

    @property
    def used(self) -> pd.DataFrame:
        """The runs that enter the tables: FINISHED, logged up to their last epoch, one per (condition, seed)."""
        return self.runs[self.runs["use"] == USED]

    @property
    def metric_keys(self) -> list[str]:
        return [c for c in self.runs.columns if "/" in c]


# ---- finding the experiment and the sweep ----------------------------------------------------------------------------
def find_experiment(client: MlflowClient, experiment: str) -> tuple[str, str]:
    """(id, name) of the experiment named `experiment` (or with that id)."""
    try:
        exp = runs_query.experiment(client, experiment, by_id=True)
    except runs_query.RunsQueryError as e:
        raise AggregateError(str(e)) from None
    return exp.experiment_id, exp.name


def find_sweep(client: MlflowClient, experiment_id: str, parent_run_id: str | None = None, kind: str | None = None):
    """The sweep run `parent_run_id`, else the newest sweep run (of `kind`, keys.KIND_*, if given) in the experiment."""
    if parent_run_id:
        run = client.get_run(parent_run_id)
        if run.info.experiment_id != experiment_id:
            raise AggregateError(f"run {parent_run_id} belongs to experiment {run.info.experiment_id}, "
                                 f"not {experiment_id}")
        return run
    run = runs_query.newest_sweep(client, experiment_id, kind)
    if run is None:
        raise AggregateError(f"experiment {experiment_id} holds no {kind or ''} sweep run (tag {keys.TAG_ROLE}="
                             f"{keys.ROLE_SWEEP}); run tune_jobs/ablation.py first or pass --parent-run RUN_ID")
    return run


# ---- one row per run -------------------------------------------------------------------------------------------------
_CONFIG_COLUMNS = tuple(f for f in FIELD_KINDS if f not in ("seed", "ood_sets"))  # CONDITION_FIELDS among them


def _param(params: dict[str, str], name: str) -> Any:
    """A TrialConfig param (a string in MLflow) back in its field's type; None when absent or unreadable. Tuple
    fields (lr_steps, betas) stay 'a,b' text: a column that groupby and drop_duplicates can hash."""
    if name not in params or params[name] == "None":
        return None
    if FIELD_KINDS[name].many:
        return params[name]
    try:
        return parse_field(name, params[name])
    except ValueError:
        return None


def _run_row(run) -> dict[str, Any]:
    """Meta columns, typed condition fields and final-epoch metric values of one MLflow run."""
    tags, params = run.data.tags, run.data.params
    # latest value = highest step; keys in the current layout (ncood.keys.canonical_key: older stores read the same)
    # MLflow's system metrics (system/*) step by sample, not by epoch: they are not results and are left out
    latest = {keys.canonical_key(m.key): (m.step, m.value) for m in run.data.to_proto().metrics
              if not m.key.startswith(keys.SYSTEM_PREFIX)}
    final_step = max((step for step, _ in latest.values()), default=None)
    seed = tags.get(keys.TAG_SEED, params.get("seed"))
    condition = tags.get(keys.TAG_CONDITION) or re.sub(r"-s\d+$", "", run.info.run_name or "?")
    error = tags.get(keys.TAG_ERROR, "")
    row: dict[str, Any] = {
        "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
        "start_time": run.info.start_time, "condition": condition,
        "seed": int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else None,
        "final_step": final_step, "use": "", "error": error.strip().splitlines()[0] if error.strip() else "",
        "ood_sets": params.get("ood_sets", ""),
    }
    # every config field, typed (the condition fields group runs; the rest lets ncood.aggregate.papers match the
    # papers' recipes); seed and ood_sets are meta columns above
    row.update({f: _param(params, f) for f in _CONFIG_COLUMNS})
    row.update({k: (v if step == final_step else np.nan) for k, (step, v) in latest.items()})
    return row


def _mark_use(runs: pd.DataFrame) -> pd.DataFrame:
    """`use`: used | failed | incomplete (finished early, killed, still running) | duplicate (a second run of
    the same condition and seed: the latest complete one is used)."""
    runs = runs.copy()
    complete = (runs["status"] == tracking.FINISHED) & (
        runs["epochs"].isna() | (runs["final_step"] == runs["epochs"]))
    runs["use"] = np.where(complete, USED, np.where(runs["status"] == tracking.FAILED, FAILED, INCOMPLETE))
    order = runs.assign(_c=complete).sort_values(["_c", "start_time"], ascending=[False, False])
    dup = order.duplicated(["condition", "seed"], keep="first") & order["_c"]
    runs.loc[dup[dup].index, "use"] = DUPLICATE
    return runs


def _expected(params: dict[str, str], runs: pd.DataFrame) -> tuple[list[str], list[int]]:
    """Expected conditions and seeds: the sweep's params `conditions` and `seeds` (ncood.tune.sweep.run_grid logs
    them; the ablation job's `--seeds N` means seeds 0..N-1); failing that, what the runs show (the most seeds
    any condition has)."""
    seen_conditions = list(dict.fromkeys(runs["condition"])) if len(runs) else []
    conditions = [c for c in params.get("conditions", "").split(",") if c]
    conditions += [c for c in seen_conditions if c not in conditions]
    seen = sorted({int(s) for s in runs["seed"].dropna()}) if len(runs) else []
    count = int(params["seeds"]) if params.get("seeds", "").isdigit() else None
    if count is None:
        per_cond = runs.groupby("condition")["seed"].nunique() if len(runs) else pd.Series(dtype=int)
        count = int(per_cond.max()) if len(per_cond) else 0
    seeds = list(range(count)) if all(0 <= s < count for s in seen) else seen
    return conditions, seeds


def load_sweep(tracking_uri: str | None, experiment: str | None = None, parent_run_id: str | None = None,
               experiment_id: str | None = None) -> SweepData:
    """Read a sweep: `experiment` (name or id) or `experiment_id`; `parent_run_id` or the newest sweep in it."""
    uri = tracking.existing_store(tracking_uri)
    client = MlflowClient(uri)
    if experiment_id is None:
        if experiment is None:
            raise AggregateError("pass an experiment name (or id)")
        experiment_id, name = find_experiment(client, experiment)
    else:
        name = client.get_experiment(experiment_id).name
    parent = find_sweep(client, experiment_id, parent_run_id)
    info = SweepInfo(uri, experiment_id, name, parent.info.run_id, parent.info.run_name or parent.info.run_id,
                     parent.data.tags.get(keys.TAG_KIND, ""), dict(parent.data.params))
    rows = [_run_row(r) for r in runs_query.child_runs(client, experiment_id, info.run_id, keys.ROLE_TRIAL)]
    runs = pd.DataFrame(rows, columns=None if rows else [*_META, "ood_sets", *_CONFIG_COLUMNS])
    if len(runs):
        runs = _mark_use(runs)
    conditions, seeds = _expected(info.params, runs)
    ood_sets = next((s.split(",") for s in runs.get("ood_sets", []) if s), [])
    if len(runs):  # grid order of the conditions, so tables and figures list them alike
        runs = runs.sort_values(["condition", "seed"], key=lambda c: c.map(
            {v: i for i, v in enumerate(conditions)}) if c.name == "condition" else c, kind="stable")
        runs = runs.reset_index(drop=True)
    return SweepData(info, runs, conditions, seeds, ood_sets)


# ---- per-epoch curves ------------------------------------------------------------------------------------------------
def metric_histories(tracking_uri: str, run_ids: Sequence[str], metric_keys: Iterable[str]) -> pd.DataFrame:
    """Long frame (run_id, key, step, value) of every logged value of `metric_keys` in `run_ids`.

    One query per key on a SQL store (the store's bulk history), else one `get_metric_history` per run and key
    (a tracking server). If a step was logged twice (it should not be: ncood.tracking never re-logs a step) the
    later value wins.
    """
    client = MlflowClient(tracking_uri)
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None)
    rows: list[tuple[str, str, int, float, int]] = []
    for key in metric_keys:
        if bulk is not None and run_ids:
            try:
                rows += [(m.run_id, key, m.step, m.value, m.timestamp) for m in bulk(list(run_ids), key, 10**9)]
                continue
            except Exception:  # noqa: BLE001 - a store that does not implement it: fall back per run
                pass
        for rid in run_ids:
            rows += [(rid, key, m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, key)]
    df = pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])
    df = df.sort_values("timestamp", kind="stable").drop_duplicates(["run_id", "key", "step"], keep="last")
    return df.drop(columns="timestamp").sort_values(["run_id", "key", "step"]).reset_index(drop=True)
