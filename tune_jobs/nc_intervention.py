"""The NC intervention job (seed paper Sec. 4.2): continue the no-L2 runs of an ablation sweep from a kept checkpoint,
once with the NC loss (intervention) and once with cross-entropy (control), then aggregate (Figs. 3-4).

    python tune_jobs/ablation.py                                   # keeps checkpoints/epoch_010.pt per trial
    python tune_jobs/nc_intervention.py --experiment ablation-default
    python tune_jobs/nc_intervention.py --experiment ablation-table1 --from-epoch 50   # the paper's setting

Logs into the MLflow experiment `<experiment>-nc-intervention` (one sweep run, one child run per seed and group).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

try:
    import ncood  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncood import keys  # noqa: E402
from ncood.config import ConfigError  # noqa: E402
from ncood.intervention import GROUPS, InterventionSettings  # noqa: E402  (light: no Ray/MLflow/torch)
from ncood.tune import jobs  # noqa: E402

_D = InterventionSettings()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="NC intervention vs control continuation of an ablation's no-L2 runs "
                                            "(seed paper Sec. 4.2), one MLflow child run per seed and group.")
    g = p.add_argument_group("intervention")
    g.add_argument("--from-epoch", type=int, default=_D.from_epoch,
                   help=f"restore the checkpoint of this epoch, else the latest kept one before it "
                        f"(default {_D.from_epoch}; paper: 50)")
    g.add_argument("--intervention-epochs", type=int, default=_D.epochs,
                   help=f"epochs to continue (default {_D.epochs})")
    g.add_argument("--lr", type=float, default=_D.lr, help=f"learning rate (default {_D.lr:g})")
    g.add_argument("--lr-step", type=int, default=_D.lr_step,
                   help=f"LR x0.1 after this many epochs (default {_D.lr_step})")
    g.add_argument("--batch-size", type=int, default=_D.batch_size, help=f"batch size (default {_D.batch_size})")
    g.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=list(GROUPS), help="groups to run")
    g.add_argument("--condition", default=None, help="source condition (default: the sweep's only no-L2 condition)")
    g.add_argument("--source-sweep", default=None, metavar="RUN_ID", help="ablation sweep run (default: the newest)")
    g.add_argument("--seeds", type=int, default=None, metavar="N", help="only seeds 0..N-1 (default: every seed)")
    g.add_argument("--intervention-experiment", default=None,
                   help="MLflow experiment to log into (default: <experiment>-nc-intervention)")
    g.add_argument("--no-aggregate", action="store_true", help="skip the tables and figures")
    g.add_argument("--aggregate-out", default=None, metavar="DIR",
                   help="folder for the tables and figures (default: <repo>/runs/aggregate/<intervention experiment>; "
                        "inside a Ray job ~/ray_results/aggregate/...)")
    jobs.add_run_flags(p, job="nc_intervention")
    jobs.add_version(p)
    p.set_defaults(experiment=keys.DEFAULT_EXPERIMENT)
    p._option_string_actions["--experiment"].help = (  # here it names the source, as the ablation job logged it
        f"MLflow experiment of the ablation sweep to continue (default: {keys.DEFAULT_EXPERIMENT})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ncood.intervention import default_experiment
    from ncood.runs_query import RunsQueryError
    from ncood.tracking import TrackingError, lasting_folder
    from ncood.tune import SweepSettings, run_sweep
    from ncood.tune.intervention import SourceSelection, run_intervention

    settings = SweepSettings(
        experiment=args.intervention_experiment or default_experiment(args.experiment),
        tracking_uri=args.tracking_uri, storage_path=args.storage_path, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent, retries=args.retries,
        num_cpus=args.num_cpus, progress=not args.quiet, dashboard=args.dashboard)
    try:
        if args.aggregate_out:  # checked before the sweep: the aggregation runs after it
            lasting_folder(args.aggregate_out, "--aggregate-out")
        if args.resume:
            result = run_sweep(settings, resume=args.resume)
        else:
            st = InterventionSettings(args.from_epoch, args.intervention_epochs, args.lr, args.lr_step, args.batch_size)
            select = SourceSelection(args.experiment, args.source_sweep, args.condition,
                                     range(args.seeds) if args.seeds else None, tuple(args.groups))
            result = run_intervention(settings, select, st)
    except (ConfigError, FileNotFoundError, TrackingError, RunsQueryError) as e:
        print(f"nc_intervention: {e}", file=sys.stderr)
        return 2
    jobs.print_report(result)
    if not args.no_aggregate and not result.interrupted:
        from ncood.aggregate.intervention import aggregate_intervention

        aggregate_intervention(result.ref.tracking_uri, settings.experiment, parent_run_id=result.ref.parent_run_id,
                               out=args.aggregate_out)
    return jobs.exit_code(result)


if __name__ == "__main__":
    sys.exit(main())
