"""Hyper-parameter search for one condition: Optuna TPE proposes (lr, weight decay[, batch size]), ASHA stops the
weak trials early. Same MLflow schema as the ablation: one sweep parent run, one child run per trial.

    python tune_jobs/search.py --trials 30                       # digits, the default preset's first condition
    python tune_jobs/search.py --preset table1 --archs resnet18 --epochs 60 --l2 on --trials 40 --gpus-per-trial 0.25
    python tune_jobs/search.py --preset table1 --archs resnet50 --dry-run   # what would be tuned; starts nothing

The objective is validation accuracy (`accuracy/val`, 10% of the training set held out), not test accuracy and
not an OoD AUROC: choosing hyper-parameters on the test or OoD sets would leak them into the numbers the paper
reports. It is measured every epoch (a cheap forward pass over the validation set), because ASHA compares
trials at its rungs and Ray's OptunaSearch reads the metric from every result.
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

from ncood import keys  # noqa: E402
from ncood.config import ConfigError  # noqa: E402
from ncood.tune import config_from_tune, grid_conditions, jobs  # noqa: E402  (Ray, Optuna, MLflow: in main())
from ncood.tune.grid import NAME_PARAMS_KEY  # noqa: E402

LR_RANGE = (1e-3, 0.3)  # log-uniform; the papers use 0.1
WD_RANGE = (1e-5, 1e-2)  # log-uniform; the papers use 5e-4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Optuna (TPE) + ASHA search over learning rate and weight decay (optionally batch size) for "
                    "one condition of a grid preset; one MLflow child run per trial; prints the best config.")
    jobs.add_grid_flags(parser, seeds=False)
    jobs.add_run_flags(parser, job="search")
    jobs.add_version(parser)
    s = parser.add_argument_group("search")
    s.add_argument("--trials", type=int, default=20, help="number of sampled configurations (default 20)")
    s.add_argument("--seed", type=int, default=0, help="training seed of every trial, and the TPE sampler's seed")
    s.add_argument("--metric", default=keys.ACC_VAL,
                   help="objective (default accuracy/val; an OoD key such as auroc/gmm/photos or an NC key forces "
                        "a full evaluation every epoch, and tuning on an OoD set leaks it into the results)")
    s.add_argument("--mode", choices=("max", "min"), default="max", help="max for accuracy/AUROC, min for NC or FPR95")
    s.add_argument("--search-batch-size", action="store_true", help="also search the batch size (x0.5, x1, x2)")
    s.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs every trial gets before it can be stopped")
    s.add_argument("--reduction-factor", type=int, default=3, help="ASHA: keep the top 1/k at each rung")
    s.add_argument("--dry-run", action="store_true",
                   help="print the tuned condition, the search ranges and the objective, then exit without starting Ray")
    return parser


def describe_search(args: argparse.Namespace) -> str:
    """What --dry-run prints: the one condition tuned (resolved) and what is searched."""
    shared, conditions = grid_conditions(args.preset, jobs.overrides_from_args(args))
    name = config_from_tune({**shared, "condition": conditions[0], "seed": args.seed}).condition
    one = {**jobs.overrides_from_args(args), **conditions[0]}  # narrow the listing to the tuned condition
    batch = ", batch size x0.5/x1/x2 of the preset's" if args.search_batch_size else ""
    return (f"search: {args.trials} trials of {name} (the first of {len(conditions)} conditions), seed {args.seed}; "
            f"lr log-uniform {LR_RANGE}, weight decay log-uniform {WD_RANGE}{batch}; objective {args.metric} "
            f"({args.mode}), ASHA grace {args.grace_period}, reduction {args.reduction_factor}\n\n"
            + jobs.describe_grid(args.preset, one, [args.seed]))


def search_space(args: argparse.Namespace, shared: dict, conditions: list[dict]) -> tuple[dict, str]:
    """(param_space of the one tuned condition, its name); shared, conditions: grid_conditions of the flags."""
    from ray import tune

    if not (args.metric == keys.ACC_VAL or keys.parse_ood_key(args.metric) or args.metric.startswith("nc/")):
        raise ConfigError(f"--metric {args.metric!r}: use accuracy/val, nc/<metric> or ood/<set>/<score>/<metric> "
                          f"(it must be reported every epoch: ASHA and OptunaSearch read it from every result)")
    condition = conditions[0]
    space = {**shared, "condition": condition, "seed": args.seed,
             "lr": tune.loguniform(*LR_RANGE), "weight_decay": tune.loguniform(*WD_RANGE),
             NAME_PARAMS_KEY: ["lr", "weight_decay"]}
    if args.search_batch_size:
        bs = shared["batch_size"]
        space["batch_size"] = tune.choice([max(1, bs // 2), bs, bs * 2])
        space[NAME_PARAMS_KEY].append("batch_size")
    if args.metric != keys.ACC_VAL:
        space["eval_every"] = 1  # OoD and NC metrics exist only on evaluation epochs; ASHA needs them every epoch
    name = config_from_tune({**shared, "condition": condition, "seed": args.seed}).condition
    if len(conditions) > 1:
        print(f"search: the preset has {len(conditions)} conditions; tuning the first, {name} "
              f"(choose another with --archs / --epochs / --l2 / --spectral-norm / --leaky-gap)")
    return space, name


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        try:
            print(describe_search(args))
        except ConfigError as e:
            print(f"search: {e}", file=sys.stderr)
            return 2
        return 0
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from ncood.tracking import TrackingError
    from ncood.tune import SweepSpec, run_sweep

    settings = jobs.settings_from_args(args, "search")
    try:
        if args.resume:
            result = run_sweep(settings, resume=args.resume)
        else:
            shared, conditions = grid_conditions(args.preset, jobs.overrides_from_args(args))
            space, condition = search_space(args, shared, conditions)
            jobs.check_data(shared, conditions[:1])  # the tuned condition's data, before Ray and MLflow start
            epochs = space["condition"]["epochs"]
            tune_extra = dict(
                metric=args.metric, mode=args.mode, num_samples=args.trials,
                search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=args.seed)),
                scheduler=ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=min(args.grace_period, epochs),
                                        reduction_factor=args.reduction_factor),
            )
            columns = {keys.LOSS_TRAIN: "loss", keys.ACC_VAL: "val acc", args.metric: "objective"}
            result = run_sweep(settings, SweepSpec(
                space, keys.KIND_SEARCH, tune_extra=tune_extra, metric_columns=columns,
                parameter_columns=space[NAME_PARAMS_KEY], val_every_epoch=True,
                sweep_params={"condition": condition, "trials": args.trials, "metric": args.metric, "mode": args.mode,
                              "lr_range": LR_RANGE, "weight_decay_range": WD_RANGE,
                              "search_batch_size": args.search_batch_size},
            ))
    except (ConfigError, FileNotFoundError, TrackingError) as e:
        print(f"search: {e}", file=sys.stderr)
        return 2
    jobs.print_report(result)
    print_best(result.runs, args.metric, args.mode)
    return jobs.exit_code(result)


def print_best(runs: list, metric: str, mode: str) -> None:
    """The run with the best last value of the objective (early-stopped runs compete with their last value, as
    Ray's `get_best_result(scope="last")` does)."""
    scored = [r for r in runs if metric in r.data.metrics]
    if not scored:
        print(f"no run reported {metric}")
        return
    best = (max if mode == "max" else min)(scored, key=lambda r: r.data.metrics[metric])
    p = best.data.params
    print(f"\nbest: {best.info.run_name} ({best.info.run_id})  {metric} = {best.data.metrics[metric]:.4f}")
    print(f"  --lr {float(p['lr']):.4g} --weight-decay {float(p['weight_decay']):.4g} --batch-size {p['batch_size']}")


if __name__ == "__main__":
    sys.exit(main())
