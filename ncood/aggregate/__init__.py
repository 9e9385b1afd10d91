"""Aggregation of a sweep: which conditions win, by how much, how bad the worst seed is, how NC relates to OoD.

    runs.py     the sweep and its trial runs out of MLflow into pandas (final-epoch values, seeds found vs expected)
    tables.py   seed report, Table 1 (OoD x score), Table 2 (ablation), Table 3 (NC), Table 4 (L2 vs no-L2 twin)
    figures.py  NC2 vs AUROC scatter, NC metrics vs epoch, per-seed AUROC strip plot
    papers.py   the papers' published numbers (ncood.published) beside the measured ones, where a condition matches
    summary.py  the sweep run's headline metrics (per-condition summaries, L2 effects), the experiment note
    report.py   files (md/csv/tex/html/png), terminal output, the aggregate MLflow run

Entry points: `aggregate(...)` (library), `after_sweep(...)` (the end of tune_jobs/ablation.py),
`add_arguments(parser)` + `run(args)` (the `ncood aggregate` subcommand), `main(argv)` (tune_jobs/aggregate.py).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ncood.keys import DEFAULT_EXPERIMENT  # what tune_jobs/ablation.py names its experiment without flags
from ncood.lazy import lazy_getattr

# The names below load their module on first use (PEP 562): `ncood aggregate --help` and tune_jobs/aggregate.py
# --help build their parser without importing MLflow, pandas or matplotlib (seconds).
_EXPORTS = {
    "ROLE_AGGREGATE": "report", "TAG_SWEEP_RUN_ID": "report", "AggregateResult": "report", "aggregate": "report",
    "default_out": "report", "to_markdown": "report", "ood_set_names": "report",
    "AggregateError": "runs", "SweepData": "runs", "load_sweep": "runs", "metric_histories": "runs",
    "headline_lines": "summary", "Table": "tables", "bootstrap_diff_ci": "tables", "welch_p": "tables",
}
__all__ = sorted([*_EXPORTS, "DEFAULT_EXPERIMENT", "add_arguments", "after_sweep", "main", "run"])


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())  # PEP 562: ncood.lazy


def after_sweep(tracking_uri: str, experiment_id: str, parent_run_id: str,
                out: str | None = None):
    """The hook at the end of tune_jobs/ablation.py: aggregate the sweep that just ran into `out` (default
    <repo>/runs/aggregate/<experiment>; in a Ray job ~/ray_results/aggregate/<experiment> on the driver's node, which
    the printed path names) and an aggregate MLflow run, then print the short summary (one line per condition), the
    path of the full report and the MLflow UI command. A failure here is reported, not raised: the sweep's runs are
    safe in MLflow and `python tune_jobs/aggregate.py --parent-run <id>` redoes this step."""
    import socket

    from ncood import tracking
    from ncood.aggregate.report import aggregate, ood_set_names
    from ncood.aggregate.summary import headline_lines, headline_url

    try:
        res = aggregate(tracking_uri, experiment_id=experiment_id, parent_run_id=parent_run_id, out=out, echo=None)
        sets = ood_set_names(res.data)
        where = f" on {socket.gethostname()}, the node of this Ray job's driver" if tracking.in_ray_job_copy() else ""
        print("\n".join(["", *headline_lines(res.headline, res.data.conditions, sets),
                         f"Full report (every score, tables, figures): {res.out / 'report.md'}{where}",
                         f"MLflow: sweep run {parent_run_id} (summary metrics), aggregate run {res.run_id} nested "
                         f"under it. Open the UI on the headline view (docs/mlflow-ui.md):",
                         "  " + tracking.ui_command(tracking_uri, page=headline_url("", experiment_id).lstrip("/"))]))
        return res
    except tracking.TrackingError as e:  # says what to do (e.g. a server that refuses this user's aggregate run)
        print(f"aggregate: {e}", file=sys.stderr)
        return None
    except Exception as e:  # noqa: BLE001 - an aggregation bug must not turn a finished sweep into a crash
        import traceback

        traceback.print_exc()
        print(f"aggregate: failed ({type(e).__name__}: {e}); redo with: {sys.executable} tune_jobs/aggregate.py "
              f"--tracking-uri {tracking_uri} --experiment {experiment_id} --parent-run {parent_run_id}",
              file=sys.stderr)
        return None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `tune_jobs/aggregate.py` and `ncood aggregate`."""
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help=f"MLflow experiment name or id (default: {DEFAULT_EXPERIMENT}, the ablation job's)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns/mlflow.db)")
    parser.add_argument("--parent-run", default=None, metavar="RUN_ID",
                        help="the sweep run to aggregate (default: the newest run tagged ncood.role=sweep)")
    parser.add_argument("--out", default=None,
                        help="folder for tables/ figures/ report.md (default: <repo>/runs/aggregate/<experiment>; "
                             "inside a Ray job ~/ray_results/aggregate/<experiment>)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--no-log-run", action="store_true",
                        help="write the files only; no aggregate MLflow run")
    return parser


def run(args: argparse.Namespace) -> int:
    """0: aggregated; 2: nothing to aggregate (unknown experiment, no sweep, bad store), or the files are written
    but the tracking server refused the aggregate run (another user's experiment: --no-log-run)."""
    from ncood import tracking
    from ncood.aggregate.report import aggregate
    from ncood.aggregate.runs import AggregateError

    try:
        aggregate(args.tracking_uri, args.experiment, parent_run_id=args.parent_run, out=args.out,
                  log_run=not args.no_log_run, resamples=args.resamples, seed=args.bootstrap_seed)
    except (AggregateError, tracking.TrackingError) as e:
        print(f"aggregate: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog=prog, description="Tables (Markdown/CSV/LaTeX/HTML) and figures of one sweep's final-epoch results, "
                               "per condition over seeds, logged to an aggregate MLflow run in the same experiment."))


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return run(build_parser(prog).parse_args(argv))
