"""The headline of a sweep as MLflow metrics of its parent run: what the runs table shows without expanding a row.

Pure functions of the runs frame (ncood.aggregate.runs.SweepData); ncood.aggregate.report logs the dict they return.
Keys (ncood.keys, layout in its docstring):

    summary/<condition>/<stat>/<base>     stat mean|min|sd over the condition's used seeds (sd: ddof=1, as the
                                          tables), base: accuracy/test, nc/nc1, and auroc/<score>/<set> for every
                                          score and OoD set the trials logged
    l2_effect/<L2 condition>/<stat>/<base>   stat diff|ci_low|ci_high: mean(L2) - mean(L2-off twin) and its 95%
                                          percentile-bootstrap interval, taken from ncood.aggregate.tables.
                                          l2_effect_table (the same numbers as Table 4, for every score)

Size: with S scores, O OoD sets and C conditions that is 3*C*(S*O + 2) + 3*(C/2)*(S*O + 1) metrics (15 scores x
3 sets x 2 conditions: 282 + 138 = 420), one log_batch; MLflow's chart view groups them into sections such as
`summary/<condition>/mean/auroc/gmm` (the GMM's mean AUROC on every OoD set) and `l2_effect/<condition>/diff/auroc/gmm`.
AUROC only (not FPR95 or AUPR): the papers' headline metric; the tables and the trial runs keep the others.

The experiment description (MLflow's `mlflow.note.content` experiment tag, shown above the runs table) says what ran
and where these keys are.
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pandas as pd

from ncood import keys
from ncood.aggregate.tables import AUROC, describe, l2_effect_table

EXPERIMENT_NOTE = "mlflow.note.content"  # MLflow's own tag for a description (markdown), of an experiment or a run
# The MLflow UI's "share view" link: the experiment tag `mlflow.sharedViewState.<key>` holds the runs page's view
# state as JSON, and `#/experiments/<id>/runs?viewStateShareKey=<key>` opens it (MLflow 3.17's UI, the format its
# Share button writes). ncood writes one view that shows the headline columns; a UI without the feature simply
# shows its default view.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
VIEW_KEY = "ncood-headline"
PX_PER_CHAR = 7  # column width per character of the key (13 px UI font), so the header shows the whole key


def base_keys(ood_sets: Sequence[str], scores: Sequence[str]) -> list[str]:
    """accuracy/test, nc/nc1, then auroc/<score>/<set> for every score (outer) and set (inner)."""
    return [keys.ACC_TEST, keys.nc_key("nc1"), *(keys.ood_key(o, s, AUROC) for s in scores for o in ood_sets)]


def condition_metrics(used: pd.DataFrame, conditions: Sequence[str], ood_sets: Sequence[str],
                      scores: Sequence[str]) -> dict[str, float]:
    """summary/<condition>/<mean|min|sd>/<base> over each condition's used runs; NaN stats are left out (MLflow
    stores NaN, but an empty cell reads better than 'NaN' in the runs table)."""
    out: dict[str, float] = {}
    for cond in conditions:
        group = used[used["condition"] == cond] if len(used) else used
        for base in base_keys(ood_sets, scores):
            if base not in group.columns:
                continue
            d = describe(group[base].to_numpy(dtype=float))
            out.update({keys.summary_key(cond, stat, base): d[stat] for stat in keys.SUMMARY_STATS
                        if np.isfinite(d[stat])})
    return out


def l2_effect_metrics(runs: pd.DataFrame, used: pd.DataFrame, conditions: Sequence[str], ood_sets: Sequence[str],
                      scores: Sequence[str], resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """l2_effect/<L2 condition>/<diff|ci_low|ci_high>/<base>: Table 4's rows (l2_effect_table) for every score."""
    out: dict[str, float] = {}
    for score in scores:
        table = l2_effect_table(runs, used, conditions, ood_sets, score=score, resamples=resamples, seed=seed)
        for row in table.numeric.to_dict("records"):
            for stat in keys.L2_EFFECT_STATS:
                if np.isfinite(row[stat]):
                    out[keys.l2_effect_key(row["condition"], stat, row["key"])] = float(row[stat])
    return out


def sweep_metrics(runs: pd.DataFrame, used: pd.DataFrame, conditions: Sequence[str], ood_sets: Sequence[str],
                  scores: Sequence[str], resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Every metric of the sweep's parent run (condition summaries and L2 effects)."""
    return {**condition_metrics(used, conditions, ood_sets, scores),
            **l2_effect_metrics(runs, used, conditions, ood_sets, scores, resamples, seed)}


def headline_columns(metrics: dict[str, float], conditions: Sequence[str], ood_sets: Sequence[str],
                     score: str = "gmm") -> list[str]:
    """The keys the headline view shows, in order: the L2 effects (diff, ci_low, ci_high) of the score's AUROC on each
    OoD set and of test accuracy, then per condition the score's AUROC mean and min per set, accuracy and NC1 mean."""
    bases = [keys.ood_key(o, score, AUROC) for o in ood_sets]
    cols = [keys.l2_effect_key(c, st, b) for c in conditions for b in [*bases, keys.ACC_TEST]
            for st in keys.L2_EFFECT_STATS]
    cols += [keys.summary_key(c, st, b) for c in conditions for b in bases for st in ("mean", "min")]
    cols += [keys.summary_key(c, "mean", b) for c in conditions for b in (keys.ACC_TEST, keys.nc_key("nc1"))]
    return [k for k in cols if k in metrics]


def headline_view(columns: Sequence[str]) -> str:
    """The runs-page view state (JSON) of the shared view: run name, then `columns` in this order, each wide enough
    for its whole key (the UI's column ids are "metrics.`<key>`")."""
    metric_cols = [f"metrics.`{k}`" for k in columns]
    return json.dumps({"selectedColumns": metric_cols, "columnOrder": ["attributes.`Run Name`", *metric_cols],
                       "columnWidths": {f"metrics.`{k}`": PX_PER_CHAR * len(k) + 32 for k in columns}})


def headline_url(ui_base: str, experiment_id: str) -> str:
    """The runs page of the experiment in the headline view (ui_base: e.g. http://127.0.0.1:5000)."""
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"


def experiment_note(experiment: str, sweep_name: str, conditions: Sequence[str], seeds: int,
                    ood_sets: Sequence[str], has_l2_pair: bool, experiment_id: str = "") -> str:
    """The experiment description (markdown): what ran and how to read it in the UI; it starts with the link to the
    headline view (the description box shows its first line)."""
    pair = ("`l2_effect/<L2 condition>/diff/auroc/<score>/<set>` is mean(L2) - mean(no L2), with `ci_low`/`ci_high` "
            "its 95% bootstrap interval (an interval above 0: L2 helps).") if has_l2_pair else (
            "This sweep has no L2-off twin of an L2 condition, so no `l2_effect/...` metrics.")
    view = f"[Headline view](#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}): " if experiment_id else ""
    return (f"{view}**{experiment}**: sweep `{sweep_name}`, {len(conditions)} conditions x {seeds} seeds "
            f"({', '.join(f'`{c}`' for c in conditions)}); OoD sets: {', '.join(ood_sets)}.\n\n"
            f"How to read it: the sweep run (role `sweep`) carries `summary/<condition>/<mean|min|sd>/<key>` over "
            f"seeds (keys `accuracy/test`, `nc/nc1`, `auroc/<score>/<set>`). {pair} Expand the sweep row for one "
            f"child run per trial and an `aggregate-...` run per aggregation (the newest is current) with the tables "
            f"(`tables/`) and figures (`figures/`). "
            f"Chart view: section `auroc/<score>` shows a score's AUROC on every OoD set per trial. "
            f"See docs/mlflow-ui.md in the ncood repository.")


def headline_lines(metrics: dict[str, float], conditions: Sequence[str], ood_sets: Sequence[str],
                   score: str = "gmm") -> list[str]:
    """The end-of-sweep console summary, from the sweep run's metrics: one line per condition (the score's AUROC
    mean/min per OoD set, test accuracy, NC1, means over seeds), then one per L2 effect on the first OoD set."""
    def get(key: str, digits: int = 3) -> str:
        v = metrics.get(key)
        return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"

    width = max((len(c) for c in conditions), default=0)
    lines = [f"{score.upper()} AUROC mean/min over seeds per OoD set; test accuracy and NC1 mean:"]
    for cond in conditions:
        aurocs = "  ".join(f"{o} {get(keys.summary_key(cond, 'mean', keys.ood_key(o, score, AUROC)))}/"
                           f"{get(keys.summary_key(cond, 'min', keys.ood_key(o, score, AUROC)))}" for o in ood_sets)
        lines.append(f"  {cond:{width}s}  {aurocs}  | accuracy {get(keys.summary_key(cond, 'mean', keys.ACC_TEST))}"
                     f"  NC1 {get(keys.summary_key(cond, 'mean', keys.nc_key('nc1')), 4)}")
    for cond in conditions:
        for o in ood_sets[:1]:
            base = keys.ood_key(o, score, AUROC)
            diff = keys.l2_effect_key(cond, "diff", base)
            if diff in metrics:
                low, high = (keys.l2_effect_key(cond, stat, base) for stat in ("ci_low", "ci_high"))
                ci = (f"95% CI [{get(low)}, {get(high)}]" if low in metrics
                      else "no 95% CI: fewer than 2 seeds in a group; run more seeds")
                lines.append(f"  L2 effect {cond}, {score.upper()} AUROC {o}: {get(diff):s} ({ci})")
    return lines
