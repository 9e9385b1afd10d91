"""The aggregation step end to end: read the sweep, build the tables and figures, write them as files (Markdown, CSV,
LaTeX, HTML, PNG), print the tables, and log everything to one aggregate MLflow run in the sweep's experiment.

The aggregate run: a child of the sweep run (`mlflow.parentRunId`, so the UI nests it under the sweep beside the trials;
trial queries filter on `ncood.role`=`trial`), tag `ncood.role`=`aggregate`, tag `ncood.sweep_run_id`=<the sweep run
id>, metric `pearson_r_nc2_auroc` (figure a), artifacts `tables/<name>.{md,csv,tex,html}`,
`figures/*.png`, `report.md`, and each table once more through `log_table` (`tables/<name>.json`) so the MLflow
UI shows it as a table.
The sweep run itself receives the headline metrics (ncood.aggregate.summary: per-condition AUROC/accuracy/NC1
mean, min, sd and the L2 effects with their bootstrap intervals), and the experiment its description.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from ncood import keys, tracking
from ncood.aggregate import figures, summary
from ncood.aggregate.papers import comparison_summary, published_table
from ncood.aggregate.runs import FAILED, INCOMPLETE, USED, SweepData, load_sweep, metric_histories
from ncood.aggregate.tables import GMM, Table, all_tables
from ncood.ood import SCORES

TAG_SWEEP_RUN_ID, ROLE_AGGREGATE = keys.TAG_SWEEP_RUN_ID, keys.ROLE_AGGREGATE  # names of the schema (ncood.keys)
TABLE_FORMATS = ("md", "csv", "tex", "html")
FIGURES = {"nc_vs_auroc": "fig_a_nc2_vs_auroc.png", "nc_curves": "fig_b_nc_vs_epoch.png",
           "auroc_seeds": "fig_c_auroc_per_seed.png"}


@dataclass
class AggregateResult:
    data: SweepData
    tables: list[Table]
    out: Path
    files: list[Path] = field(default_factory=list)  # every file written, tables and figures
    figures: dict[str, Path] = field(default_factory=dict)
    pearson_r: float = np.nan  # figure (a)
    run_id: str | None = None  # the aggregate MLflow run (None with log_run=False)
    headline: dict[str, float] = field(default_factory=dict)  # the sweep run's summary metrics (logged: log_run)


# ---- rendering -------------------------------------------------------------------------------------------------------
def to_markdown(df: pd.DataFrame) -> str:
    """GitHub Markdown, columns padded so it also reads in a terminal (pandas' to_markdown needs `tabulate`)."""
    cells = [[str(c) for c in df.columns]] + [["" if v is None else str(v) for v in row] for row in df.itertuples(
        index=False)]
    cells = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(len(df.columns))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_cell(text: str) -> str:
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX[m.group()], str(text))
    return out.replace("±", r"$\pm$").replace("–", "--")


def to_latex(table: Table) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}), cells escaped, ± as $\\pm$."""
    df = table.display.map(_latex_cell)
    df.columns = [_latex_cell(c) for c in df.columns]
    body = df.to_latex(index=False, escape=False, column_format="l" * len(df.columns))
    return f"% {table.title}\n{body}"


def to_html(table: Table) -> str:
    notes = "".join(f"<p>{n}</p>" for n in table.notes)
    return (f"<h3>{table.title}</h3>\n" + table.display.to_html(index=False, border=0, na_rep="–") + notes + "\n")


def render(table: Table) -> str:
    """What the terminal shows: title, Markdown table, notes."""
    parts = [f"## {table.title}", "", to_markdown(table.display) if len(table.display) else "(empty)"]
    if table.notes:
        parts += [""] + table.notes
    return "\n".join(parts) + "\n"


def write_table(table: Table, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {f: folder / f"{table.name}.{f}" for f in TABLE_FORMATS}
    paths["md"].write_text(render(table))
    table.numeric.to_csv(paths["csv"], index=False)
    paths["tex"].write_text(to_latex(table))
    paths["html"].write_text(to_html(table))
    return list(paths.values())


# ---- the step --------------------------------------------------------------------------------------------------------
def default_out(experiment_name: str) -> Path:
    """<repo>/runs/aggregate/<experiment> (absolute, beside runs/ray). Inside `ray job submit --working-dir` the
    repo is Ray's temporary copy, deleted when the job ends (the report's path pointed into it): there
    ~/ray_results/aggregate/<experiment> on the node of the job's driver, as the Ray storage's default moves to
    ~/ray_results (ncood.tune.sweep.default_storage_path). The aggregate run's artifacts hold the same files."""
    root = tracking.repo_root()
    base = Path("~/ray_results").expanduser() if tracking.in_ray_job_copy(root) else root / "runs"
    return base / "aggregate" / re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name)


def score_names(data: SweepData) -> list[str]:
    """Every OoD score found in the runs' metrics (no list kept here): GMM first, then in registry order (ncood.ood),
    then scores this ncood does not register, in logged order."""
    found = list(dict.fromkeys(p[1] for k in data.metric_keys if (p := keys.parse_ood_key(k))))
    order = {name: i for i, name in enumerate(SCORES)}
    return sorted(found, key=lambda s: (s != GMM, order.get(s, len(order))))


def ood_set_names(data: SweepData) -> list[str]:
    """The trials' configured OoD sets (config order), then any other set found in the metrics."""
    found = [p[0] for k in data.metric_keys if (p := keys.parse_ood_key(k))]
    return list(dict.fromkeys([*data.ood_sets, *found]))


def make_figures(data: SweepData, ood_sets: Sequence[str], folder: Path) -> tuple[dict[str, Path], float]:
    used = data.used
    curve_keys = [keys.nc_key(m) for m in dict.fromkeys([*figures.CURVE_METRICS, "nc2_equiangular_means"])]
    if ood_sets:
        curve_keys.append(keys.ood_key(ood_sets[0], GMM, "auroc"))
    history = metric_histories(data.sweep.tracking_uri, list(used["run_id"]), curve_keys)
    out = {}
    out["nc_vs_auroc"], r, _ = figures.nc_vs_auroc(history, used, ood_sets[0] if ood_sets else "?",
                                                   folder / FIGURES["nc_vs_auroc"])
    out["nc_curves"] = figures.nc_curves(history, used, data.conditions, folder / FIGURES["nc_curves"])
    out["auroc_seeds"] = figures.auroc_strip(used, data.conditions, list(ood_sets), folder / FIGURES["auroc_seeds"])
    return out, r


def log_aggregate_run(data: SweepData, result: AggregateResult, resamples: int, seed: int) -> str:
    """One aggregate run in the sweep's experiment: tags, a few params, every file, and each table via log_table."""
    client = MlflowClient(data.sweep.tracking_uri)
    tags = {keys.TAG_ROLE: keys.ROLE_AGGREGATE, keys.TAG_SWEEP_RUN_ID: data.sweep.run_id, MLFLOW_PARENT_RUN_ID: data.sweep.run_id,
            **({keys.TAG_KIND: data.sweep.kind} if data.sweep.kind else {}), **tracking.git_state()}
    run = client.create_run(data.sweep.experiment_id, run_name=f"aggregate-{data.sweep.run_name}", tags=tags)
    rid = run.info.run_id
    try:
        runs = data.runs
        params = {"sweep_run_id": data.sweep.run_id, "sweep_run_name": data.sweep.run_name,
                  "conditions": len(data.conditions), "seeds_expected": len(data.expected_seeds),
                  **{f"runs_{use}": int((runs["use"] == use).sum()) if len(runs) else 0  # runs_used, ...
                     for use in (USED, FAILED, INCOMPLETE)},
                  "bootstrap_resamples": resamples, "bootstrap_seed": seed,
                  "figure_ood_set": ood_set_names(data)[0] if ood_set_names(data) else "", "figure_score": GMM,
                  **comparison_summary(next((t for t in result.tables if t.name == "published"), None))}
        now = tracking.now_ms()
        client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()],
                         metrics=[Metric("pearson_r_nc2_auroc", result.pearson_r, now, 0)]
                         if np.isfinite(result.pearson_r) else [])
        log_outputs(client, rid, result.files, result.out, result.tables)
    except BaseException as e:
        fail_run(client, rid, e)
        raise
    return rid


def log_headline(data: SweepData, metrics: dict[str, float]) -> None:
    """The sweep run's summary metrics (ncood.aggregate.summary), its description (the console summary), the
    experiment's description and the headline view. Logged at
    step 0 with one timestamp: a re-aggregation adds a newer value of each key, which the runs table shows."""
    sets = ood_set_names(data)
    client, now = MlflowClient(data.sweep.tracking_uri), tracking.now_ms()
    items = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for i in range(0, len(items), MAX_METRICS_PER_BATCH):
        client.log_batch(data.sweep.run_id, metrics=items[i:i + MAX_METRICS_PER_BATCH])
    note = summary.experiment_note(data.sweep.experiment_name, data.sweep.run_name, data.conditions,
                                   len(data.expected_seeds), sets, any(k.startswith("l2_effect/") for k in metrics),
                                   data.sweep.experiment_id)
    client.set_experiment_tag(data.sweep.experiment_id, summary.EXPERIMENT_NOTE, note)
    lines = summary.headline_lines(metrics, data.conditions, sets)  # the console summary as the run's description
    client.set_tag(data.sweep.run_id, summary.EXPERIMENT_NOTE, "```\n" + "\n".join(lines) + "\n```")
    view = summary.headline_view(summary.headline_columns(metrics, data.conditions, sets))
    client.set_experiment_tag(data.sweep.experiment_id, summary.SHARED_VIEW_TAG + summary.VIEW_KEY, view)


def log_outputs(client: MlflowClient, rid: str, files: Sequence[Path], out: Path, tables: Sequence[Table]) -> None:
    """Every file (keeping its sub-folder under `out`), each non-empty table via log_table, then FINISHED."""
    for path in files:  # exactly this aggregation's files, whatever else the folder holds
        sub = path.parent.relative_to(out).as_posix()
        client.log_artifact(rid, str(path), None if sub == "." else sub)
    for t in tables:
        if len(t.display):
            client.log_table(rid, t.display, f"tables/{t.name}.json")
    client.set_terminated(rid, tracking.FINISHED)


def fail_run(client: MlflowClient, rid: str, error: BaseException) -> None:
    """Mark an aggregate run FAILED with the error in its `error` tag (nothing is left RUNNING)."""
    client.set_tag(rid, keys.TAG_ERROR, tracking.error_text(error))
    client.set_terminated(rid, tracking.FAILED)


def _log_run(data: SweepData, result: AggregateResult, resamples: int, seed: int) -> str:
    """The sweep run's headline and the aggregate run (returns its id), after the files are written. A shared server
    refuses both to a user who may only read the experiment: a TrackingError saying where the files are."""
    try:
        log_headline(data, result.headline)
        return log_aggregate_run(data, result, resamples, seed)
    except MlflowException as e:
        if not tracking.permission_denied(e):
            raise
        refused = tracking.refusal(data.sweep.tracking_uri, f"log to experiment {data.sweep.experiment_name!r}")
        raise tracking.TrackingError(
            f"the files are written ({result.out}), but {refused}: logging the aggregate run needs EDIT permission "
            f"on the experiment. Rerun with --no-log-run (files only), or ask its owner for EDIT permission") from None


def aggregate(tracking_uri: str | None = None, experiment: str | None = None, *, experiment_id: str | None = None,
              parent_run_id: str | None = None, out: str | Path | None = None, log_run: bool = True,
              resamples: int = 10_000, seed: int = 0, echo: Callable[[str], None] | None = print) -> AggregateResult:
    """Aggregate one sweep (the newest in the experiment unless `parent_run_id`): tables, figures, files, MLflow run.

    echo: where the tables and messages go (None: silent)."""
    echo = echo or (lambda _: None)
    out = tracking.lasting_folder(out, "--out") if out else None  # before any work: a job copy would lose it
    data = load_sweep(tracking_uri, experiment, parent_run_id, experiment_id=experiment_id)
    out = out or default_out(data.sweep.experiment_name)
    sets, scores = ood_set_names(data), score_names(data)
    tables = all_tables(data.runs, data.conditions, data.expected_seeds, sets, scores, resamples, seed)
    comparison = published_table(data.runs, data.used, data.conditions, len(data.expected_seeds))
    tables += [comparison] if len(comparison.display) else []  # an empty table would only say "no match"
    result = AggregateResult(data, tables, out)
    result.headline = summary.sweep_metrics(data.runs, data.used, data.conditions, sets, scores, resamples, seed)
    for t in tables:
        result.files += write_table(t, out / "tables")
    result.figures, result.pearson_r = make_figures(data, sets, out / "figures")
    result.files += list(result.figures.values())
    head = (f"# Sweep {data.sweep.run_name} ({data.sweep.run_id}), experiment {data.sweep.experiment_name}\n\n"
            f"{len(data.used)} runs used of {len(data.runs)}; {len(data.conditions)} conditions x "
            f"{len(data.expected_seeds)} seeds expected; final-epoch values.\n"
            + ("" if len(comparison.display) else f"\n{comparison.notes[0]}\n"))
    report = head + "\n" + "\n".join(render(t) for t in tables) + "\n" + "\n".join(
        f"![{k}](figures/{p.name})" for k, p in result.figures.items()) + "\n"
    (out / "report.md").write_text(report)
    result.files.append(out / "report.md")
    echo(report)
    echo(f"Files: {out}")
    if log_run:
        result.run_id = _log_run(data, result, resamples, seed)
        echo(f"MLflow: aggregate run {result.run_id} in experiment {data.sweep.experiment_name} "
             f"(tag {keys.TAG_SWEEP_RUN_ID}={data.sweep.run_id})\n  " + tracking.ui_command(
                 data.sweep.tracking_uri, page=summary.headline_url("", data.sweep.experiment_id).lstrip("/")))
    return result

