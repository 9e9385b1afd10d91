"""Aggregation of the NC intervention sweep (seed paper Sec. 4.2): AUROC change from the onset per group (Fig. 4) and
NC metric curves of both groups (Fig. 3), as tables and PNG figures in one aggregate MLflow run.

Reads the sweep written by ncood.tune.intervention: child runs tagged `group` (control | intervention) and
`onset_epoch`, metrics at step = onset + continuation epoch. Every curve is indexed by the continuation epoch
(0 = onset) and averaged over seeds; the AUROC change is per seed (AUROC(epoch) - AUROC(onset)) before averaging.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from ncood import keys, runs_query, tracking
from ncood.aggregate import figures
from ncood.aggregate.report import default_out, fail_run, log_outputs, render, write_table
from ncood.aggregate.runs import AggregateError, find_experiment, find_sweep, metric_histories
from ncood.aggregate.tables import Table, fmt, mean_sd

GROUP_ORDER = ("control", "intervention")
SUMMARY_METRICS = ("nc1", "nc2_equinorm_means", "nc2_equiangular_means", "nc2_etf_distance", "nc3_self_duality")
FIG_AUROC, FIG_NC = "fig4_auroc_change.png", "fig3_nc_curves.png"


@dataclass
class InterventionResult:
    runs: pd.DataFrame  # one row per continuation run: run_id, run_name, group, seed, onset, status
    history: pd.DataFrame  # long: run_id, key, step, value, epoch (continuation epoch), group, seed
    tables: list[Table]
    out: Path
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None


def load_intervention(tracking_uri: str, experiment_id: str, parent_run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, history) of the intervention sweep's FINISHED continuation runs."""
    client = MlflowClient(tracking_uri)
    runs = pd.DataFrame([{
        "run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
        "group": r.data.tags.get(keys.TAG_GROUP, "?"), "seed": int(r.data.tags.get(keys.TAG_SEED, -1)),
        "onset": int(r.data.tags.get(keys.TAG_ONSET, 0)), "ood_sets": r.data.params.get("ood_sets", ""),
    } for r in runs_query.child_runs(client, experiment_id, parent_run_id, keys.ROLE_TRIAL)])
    if runs.empty or not (runs["status"] == tracking.FINISHED).any():
        raise AggregateError(f"sweep {parent_run_id} has no finished continuation runs")
    runs = runs[runs["status"] == tracking.FINISHED].reset_index(drop=True)
    ood = [s for s in runs["ood_sets"].iloc[0].split(",") if s]
    wanted = [keys.nc_key(m) for m in keys.NC_METRICS] + [keys.ood_key(s, "gmm", "auroc") for s in ood] + [
        keys.LOSS_TRAIN, keys.ACC_TRAIN, keys.ACC_TEST]
    hist = metric_histories(tracking_uri, list(runs["run_id"]), wanted)
    hist = hist.merge(runs[["run_id", "group", "seed", "onset"]], on="run_id")
    hist["epoch"] = hist["step"] - hist["onset"]
    return runs, hist


def _groups(hist: pd.DataFrame) -> list[str]:
    found = list(dict.fromkeys(hist["group"]))
    return [g for g in GROUP_ORDER if g in found] + [g for g in found if g not in GROUP_ORDER]


def auroc_change(hist: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per run: AUROC(epoch) - AUROC(onset) for `key`; columns run_id, group, seed, epoch, delta."""
    h = hist[hist["key"] == key]
    base = h[h["epoch"] == 0].set_index("run_id")["value"]
    h = h[h["run_id"].isin(base.index)].copy()
    h["delta"] = h["value"] - h["run_id"].map(base)
    return h[["run_id", "group", "seed", "epoch", "delta"]]


def auroc_change_table(hist: pd.DataFrame, key: str) -> Table:
    """Fig. 4 as numbers: mean (SD) over seeds of the AUROC change per group and continuation epoch."""
    d = auroc_change(hist, key)
    groups = _groups(hist)
    g = d.groupby(["epoch", "group"])["delta"].agg(["mean", "std", "count"]).unstack("group")
    numeric = pd.DataFrame({"epoch": g.index})
    display = pd.DataFrame({"epoch": g.index})
    for grp in groups:
        for stat in ("mean", "std", "count"):
            numeric[f"{grp}_{stat}"] = g[(stat, grp)].to_numpy() if (stat, grp) in g else np.nan
        display[f"{grp} ΔAUROC"] = [mean_sd(m, s) for m, s in zip(numeric[f"{grp}_mean"], numeric[f"{grp}_std"])]
    notes = [f"{key}: AUROC(epoch) − AUROC(onset) per seed, mean ± SD over seeds (seed paper Fig. 4)."]
    return Table("auroc_change", f"AUROC change from the intervention onset ({key})", numeric, display, notes)


def nc_curves_table(hist: pd.DataFrame) -> Table:
    """Fig. 3 as numbers: mean over seeds of every NC metric per group and continuation epoch."""
    nc = hist[hist["key"].str.startswith("nc/")]
    g = nc.groupby(["epoch", "key", "group"])["value"].mean().unstack(["key", "group"])
    cols = [(k, grp) for k in [keys.nc_key(m) for m in keys.NC_METRICS] for grp in _groups(hist) if (k, grp) in g]
    numeric = pd.DataFrame({"epoch": g.index, **{f"{k.split('/')[1]} {grp}": g[(k, grp)].to_numpy()
                                                  for k, grp in cols}})
    display = numeric.copy()
    for c in display.columns[1:]:
        display[c] = display[c].map(fmt)
    return Table("nc_curves", "NC metrics per continuation epoch, mean over seeds (seed paper Fig. 3)", numeric,
                 display)


def nc_summary_table(hist: pd.DataFrame, metrics: Sequence[str] = SUMMARY_METRICS) -> Table:
    """Per group and NC metric: mean at the onset, after 2 epochs and at the end, and end/onset (how fast NC rises;
    lower = more collapse). The intervention group's ratios should be well below the control group's."""
    rows = []
    last = int(hist["epoch"].max())
    for m in metrics:
        h = hist[hist["key"] == keys.nc_key(m)]
        for grp in _groups(hist):
            hg = h[h["group"] == grp].groupby("epoch")["value"].mean()
            if hg.empty or 0 not in hg.index:
                continue
            at = lambda e: float(hg.get(e, np.nan))  # noqa: E731
            rows.append({"metric": m, "group": grp, "onset": at(0), "epoch_2": at(min(2, last)), "end": at(last),
                         "end_over_onset": at(last) / at(0) if at(0) else np.nan})
    numeric = pd.DataFrame(rows, columns=["metric", "group", "onset", "epoch_2", "end", "end_over_onset"])
    display = numeric.copy()
    for c in ("onset", "epoch_2", "end", "end_over_onset"):
        display[c] = display[c].map(fmt)
    display = display.rename(columns={"epoch_2": "+2 epochs", "end": f"+{last} epochs", "end_over_onset": "end/onset"})
    return Table("nc_summary", "NC metrics from the onset: intervention (NC loss) vs control (cross-entropy)",
                 numeric, display, ["mean over seeds; lower = more Neural Collapse."])


def auroc_figure(hist: pd.DataFrame, key: str, path: Path) -> Path:
    """Fig. 4: one panel per group, thin line per seed, thick mean, AUROC change vs continuation epoch."""
    d = auroc_change(hist, key)
    groups = _groups(hist)
    fig = figures._new(5.0 * len(groups), 3.8)
    axes = [fig.add_subplot(1, len(groups), i + 1) for i in range(len(groups))]
    lo, hi = (d["delta"].min(), d["delta"].max()) if len(d) else (0, 0)
    for ax, grp, colour in zip(axes, groups, (colormaps["tab10"](i) for i in range(10))):
        dg = d[d["group"] == grp]
        for _, seed_d in dg.groupby("run_id"):
            ax.plot(seed_d["epoch"], seed_d["delta"], color=colour, alpha=0.25, lw=0.8)
        mean = dg.groupby("epoch")["delta"].mean()
        ax.plot(mean.index, mean.values, color=colour, lw=2.2, marker="o", ms=3,
                label=f"mean of {dg['run_id'].nunique()} seeds")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_ylim(lo - 0.01, hi + 0.01)
        ax.set_title(f"{grp}", fontsize=10)
        ax.set_xlabel("epochs after onset")
        ax.set_ylabel(f"Δ {key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("AUROC change from the intervention onset (seed paper Fig. 4)", fontsize=11)
    return figures._save(fig, path)


def nc_figure(hist: pd.DataFrame, path: Path) -> Path:
    """Fig. 3: NC metrics vs continuation epoch, both groups in each panel (ncood.aggregate.figures.nc_curves)."""
    h = hist.drop(columns="step").rename(columns={"epoch": "step"})
    used = hist[["run_id", "group"]].drop_duplicates().rename(columns={"group": "condition"})
    return figures.nc_curves(h, used, _groups(hist), path, metrics=(*figures.CURVE_METRICS, "nc2_equinorm_classifier",
                                                                     "nc2_equiangular_classifier"))


def aggregate_intervention(tracking_uri: str | None, experiment: str, *, parent_run_id: str | None = None,
                           out: str | Path | None = None, log_run: bool = True,
                           echo: Callable[[str], None] | None = print) -> InterventionResult:
    """Tables + figures of one NC intervention sweep (the newest in `experiment` unless `parent_run_id`)."""
    echo = echo or (lambda _: None)
    uri = tracking.existing_store(tracking_uri)
    client = MlflowClient(uri)
    exp_id, exp_name = find_experiment(client, experiment)
    if parent_run_id is None:
        parent_run_id = find_sweep(client, exp_id, kind=keys.KIND_NC_INTERVENTION).info.run_id
    runs, hist = load_intervention(uri, exp_id, parent_run_id)
    ood = [s for s in runs["ood_sets"].iloc[0].split(",") if s]
    key = keys.ood_key(ood[0], "gmm", "auroc") if ood else None
    tables = [nc_summary_table(hist), nc_curves_table(hist)]
    if key:
        tables.insert(0, auroc_change_table(hist, key))
    out = tracking.lasting_folder(out, "--aggregate-out") if out else default_out(exp_name)
    result = InterventionResult(runs, hist, tables, out)
    for t in tables:
        result.files += write_table(t, out / "tables")
    result.files.append(nc_figure(hist, out / "figures" / FIG_NC))
    if key:
        result.files.append(auroc_figure(hist, key, out / "figures" / FIG_AUROC))
    counts = ", ".join(f"{g}: {n}" for g, n in runs["group"].value_counts().items())
    report = (f"# NC intervention sweep {parent_run_id}, experiment {exp_name}\n\n"
              f"{len(runs)} finished continuation runs ({counts}).\n\n" + "\n".join(render(t) for t in tables))
    (out / "report.md").write_text(report)
    result.files.append(out / "report.md")
    echo(report)
    echo(f"Files: {out}")
    if log_run:
        tags = {keys.TAG_ROLE: keys.ROLE_AGGREGATE, keys.TAG_SWEEP_RUN_ID: parent_run_id,
                keys.TAG_KIND: keys.KIND_NC_INTERVENTION, **tracking.git_state()}
        name = f"aggregate-nc-intervention-{parent_run_id[:8]}"
        rid = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        try:
            params = [Param("sweep_run_id", parent_run_id), Param("runs", str(len(runs))),
                      Param("figure_metric", key or "")]
            client.log_batch(rid, params=params, tags=[RunTag("groups", ",".join(_groups(hist)))])
            log_outputs(client, rid, result.files, out, tables)
        except BaseException as e:
            fail_run(client, rid, e)
            raise
        result.run_id = rid
        echo(f"MLflow: aggregate run {rid} in experiment {exp_name}")
    return result
