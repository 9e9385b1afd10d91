"""The ablation job: a Ray Tune grid (architecture x L2 x spectral norm x leaky/GAP x epochs x seeds) tracked in MLflow.

    python tune_jobs/ablation.py                        # default: digits, width-8 ResNet18, L2 off/on x 15 seeds
    python tune_jobs/ablation.py --preset table1 --gpus-per-trial 0.25 --data-root /data
    python tune_jobs/ablation.py --resume               # continue the newest interrupted sweep of this experiment
    python tune_jobs/ablation.py --preset table1 --dry-run   # list every resolved condition; starts nothing
    ray job submit --working-dir . -- python tune_jobs/ablation.py --tracking-uri https://mlflow.example.internal

Without RAY_ADDRESS it starts a private local Ray; `ray job submit` sets RAY_ADDRESS, so the job joins that cluster.
Each trial is one MLflow child run of one sweep parent run; see README.md and `--help`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

try:
    import ncood  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: the package sits next to tune_jobs/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncood.config import ConfigError  # noqa: E402
from ncood.tune import jobs  # noqa: E402  (Ray and MLflow load in main(), after --dry-run had its chance)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Ray Tune seed grid over the papers' conditions, one MLflow child run per trial, "
                    "a summary table and the MLflow UI command at the end. Starts a private local Ray unless "
                    "RAY_ADDRESS is set (ray job submit sets it). Ctrl+C stops the sweep; --resume continues it.",
        epilog="Cluster: ray start --head, then ray job submit --working-dir . -- python tune_jobs/ablation.py "
               "--tracking-uri https://MLFLOW-SERVER --storage-path /SHARED/ray (README.md; the server: deploy/). "
               "A sqlite store is for one machine: with more than one node the job warns.",
    )
    jobs.add_version(parser)
    jobs.add_grid_flags(parser)
    jobs.add_run_flags(parser)
    parser.add_argument("--no-aggregate", action="store_true",
                        help="skip the aggregation step (tables/figures via ncood.aggregate, when installed)")
    parser.add_argument("--no-register", action="store_true",
                        help="do not register the champion at the end (by default a sweep whose trials all finished "
                             "registers the best condition's median-seed model as ncood-ood-scorer@champion, "
                             "what `ncood serve` starts)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every resolved condition (arch, L2, spectral norm, leaky/GAP, epochs, batch size, "
                             "LR milestones, ...) and the seeds, then exit without starting Ray")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        try:
            print(jobs.describe_grid(args.preset, jobs.overrides_from_args(args), args.seeds))
        except ConfigError as e:
            print(f"ablation: {e}", file=sys.stderr)
            return 2
        return 0
    from ncood.tracking import TrackingError
    from ncood.tune import grid_conditions, run_grid

    settings = jobs.settings_from_args(args, "ablation")
    try:
        overrides = jobs.overrides_from_args(args)
        if not args.resume:  # a resumed sweep keeps its own config (grid flags are ignored)
            jobs.check_data(*grid_conditions(args.preset, overrides))  # before Ray and MLflow start
        result = run_grid(args.preset, overrides, args.seeds, settings, resume=args.resume)
    except (ConfigError, FileNotFoundError, TrackingError) as e:
        print(f"ablation: {e}", file=sys.stderr)
        return 2
    aggregating = not args.no_aggregate and not result.interrupted
    jobs.print_report(result, ui=not aggregating)  # the aggregation ends with the UI command
    code = jobs.exit_code(result)
    if code == 0 and not args.no_register:
        jobs.register_champion(result)
    if aggregating:  # last: the short summary, the report's path and the UI command
        from ncood.aggregate import after_sweep

        after_sweep(tracking_uri=result.ref.tracking_uri, experiment_id=result.ref.experiment_id,
                    parent_run_id=result.ref.parent_run_id)
    return code


if __name__ == "__main__":
    sys.exit(main())
