"""What tune_jobs/ablation.py and tune_jobs/search.py share: their flags, the settings built from them, and the
summary printed at the end (conditions, seeds finished/failed, mean test accuracy and GMM AUROC per OoD set).

Grid flags override any field of the preset: the condition axes take lists (`--l2 off on`, `--epochs 60,350`),
every other TrialConfig field is one flag made from the dataclass (so the flags cannot drift from the config).
`describe_grid` is the `--dry-run` listing: every resolved condition, without starting (or importing) Ray or MLflow;
the modules that need them (ncood.tracking, ncood.tune.sweep) are imported by the functions that use them.
`check_data` runs before a new ablation or search sweep starts Ray: every dataset the trials load is under its data
root (on a local Ray; on a cluster the workers' disks decide, and it only warns).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ncood import keys
from ncood.config import TrialConfig, add_config_flags, parse_on_off, registered_names
from ncood.tune.grid import AXES, GRIDS, grid_conditions, seed_list

if TYPE_CHECKING:
    from ncood.tune.sweep import SweepResult, SweepSettings

_AXIS_FLAGS = {"arch": "--archs", "epochs": "--epochs", "l2": "--l2", "spectral_norm": "--spectral-norm",
               "leaky_gap": "--leaky-gap", "etf_projector": "--etf-projector", "entropy_reg": "--entropy-reg"}


def _split(values: Sequence[str] | None) -> list[str] | None:
    """['60,350'] or ['60', '350'] -> ['60', '350']."""
    return None if values is None else [v for s in values for v in s.split(",") if v]


def _listed(convert: Callable[[str], Any]) -> Callable[[str], list]:
    """An argparse `type` for one value or a comma-separated list of them ('60,350' -> [60, 350]). Converting in
    argparse, not after parse_args, makes a bad value a usage error naming its flag (exit 2), as in `ncood train`:
    argparse shows an ArgumentTypeError's own text (parse_on_off: "expected on or off, got 'maybe'") and turns a
    ValueError into "invalid <__name__> value: '...'"."""

    def parse(text: str) -> list:
        return [convert(v) for v in text.split(",") if v]

    parse.__name__ = convert.__name__
    return parse


def _flat(values: Sequence[list] | None) -> list | None:
    """[[60, 350]] or [[60], [350]] (nargs="+" of _listed) -> [60, 350]."""
    return None if values is None else [v for part in values for v in part]


def add_version(parser: argparse.ArgumentParser) -> None:
    """--version: the installed ncood's version (ncood.__version__, also the package version in pyproject.toml)."""
    import ncood

    parser.add_argument("--version", action="version", version=f"%(prog)s (ncood {ncood.__version__})")


def add_grid_flags(parser: argparse.ArgumentParser, seeds: bool = True) -> None:
    """--preset, --seeds (unless `seeds=False`), the axis flags (lists) and one flag per other TrialConfig field."""
    g = parser.add_argument_group("grid (every flag overrides the preset)")
    presets = "; ".join(f"{k}: {v.help}" for k, v in GRIDS.items())
    g.add_argument("--preset", choices=sorted(GRIDS), default="default", help=f"named grid ({presets})")
    if seeds:
        g.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="seeds 0..N-1 per condition (default 15)")
    g.add_argument("--archs", nargs="+", type=_listed(str), metavar="ARCH", dest="arch",
                   help=f"architectures, e.g. resnet18 resnet50 (registered: {', '.join(registered_names('arch'))})")
    g.add_argument("--epochs", nargs="+", type=_listed(int), metavar="E",
                   help="epoch budgets, e.g. 60 350 (or 60,350)")
    for name in ("l2", "spectral_norm", "leaky_gap", "etf_projector"):
        g.add_argument(_AXIS_FLAGS[name], nargs="+", type=_listed(parse_on_off), metavar="off|on", dest=name,
                       help=f"{name} values, e.g. `off on` for both")
    g.add_argument("--entropy-reg", nargs="+", type=_listed(float), metavar="W", dest="entropy_reg",
                   help="entropy regularizer weights, e.g. `0 0.05` (ICML 2025 NC control; 0 = off)")
    add_config_flags(g, skip=(*AXES, "seed"))


def add_run_flags(parser: argparse.ArgumentParser, job: str = "ablation") -> None:
    """Where results go and how trials run (SweepSettings). job: ablation | search | nc_intervention (its trials
    keep no Ray checkpoints: no checkpoint flags; search keeps no epoch checkpoints by default)."""
    r = parser.add_argument_group("run")
    r.add_argument("--experiment", default=None, help="MLflow experiment name (default: <job>-<preset>)")
    r.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns/mlflow.db)")
    r.add_argument("--storage-path", default=None,
                   help="Ray results/checkpoints: a directory every node sees, or a URI such as s3://BUCKET/prefix "
                        "(default: <repo>/runs/ray; inside a Ray job ~/ray_results)")
    r.add_argument("--cpus-per-trial", type=float, default=1, help="CPU cores per trial (torch threads), default 1")
    r.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial, fractions share one GPU (default: 1 if the cluster has GPUs, else 0)")
    r.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once "
                   "(default: as many as the resources allow)")
    r.add_argument("--max-failures", dest="retries", metavar="N", type=int, default=1,
                   help="retries of a failing trial from its last checkpoint (default 1)")
    if job != "nc_intervention":
        every_default = ("the preset's: " + ", ".join(f"{k} {g.checkpoint_every}" for k, g in GRIDS.items()
                                                      if g.checkpoint_every != 1) + ", the others 1"
                         if job == "ablation" else "1")
        r.add_argument("--checkpoint-every", type=int, default=None,
                       help=f"Ray checkpoint every K epochs, and at the end (default: {every_default})")
        keep_default = ("the preset's (" + ", ".join(f"{k}: {','.join(map(str, g.keep_checkpoint_epochs))}"
                                                     for k, g in GRIDS.items() if g.keep_checkpoint_epochs)
                        + "; other presets: none), where tune_jobs/nc_intervention.py starts") if job == "ablation" \
            else "none"
        r.add_argument("--keep-checkpoint-epochs", nargs="+", type=_listed(int), default=None, metavar="E",
                       help="also log the checkpoint of these epochs to MLflow (checkpoints/epoch_NNN.pt), e.g. 10,50; "
                            f"default: {keep_default}")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all; not on a cluster)")
    r.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                   help="continue an interrupted sweep (Tuner.restore): the newest one of --experiment, or PATH; "
                        "finished trials are kept, unfinished and failed ones continue from their checkpoints. "
                        "Grid flags are ignored: the sweep keeps its own settings")
    r.add_argument("--quiet", action="store_true", help="no progress table")
    r.add_argument("--dashboard", action="store_true",
                   help="start Ray's dashboard with the local Ray (Ray prints its URL; default off; a cluster "
                        "started with `ray start --head` has its own)")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Grid overrides: axis lists + the other TrialConfig fields that were given."""
    out: dict[str, Any] = {}
    for name in _AXIS_FLAGS:  # converted by argparse (_listed)
        if getattr(args, name, None):
            out[name] = _flat(getattr(args, name))
    for f in dataclasses.fields(TrialConfig):
        if f.name not in AXES and f.name != "seed" and getattr(args, f.name, None) is not None:
            out[f.name] = getattr(args, f.name)
    if isinstance(out.get("ood_sets"), str):
        out["ood_sets"] = tuple(_split([out["ood_sets"]]))
    return out


def settings_from_args(args: argparse.Namespace, job: str) -> SweepSettings:
    from ncood.tune.sweep import SweepSettings

    keep = (tuple(_flat(args.keep_checkpoint_epochs)) if args.keep_checkpoint_epochs
            else GRIDS[args.preset].keep_checkpoint_epochs if job == "ablation" else ())
    every = (args.checkpoint_every if getattr(args, "checkpoint_every", None) is not None
             else GRIDS[args.preset].checkpoint_every if job == "ablation" else 1)
    return SweepSettings(
        experiment=args.experiment or f"{job}-{args.preset}", tracking_uri=args.tracking_uri,
        storage_path=args.storage_path, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, retries=args.retries, checkpoint_every=every,
        keep_checkpoint_epochs=keep, num_cpus=args.num_cpus, progress=not args.quiet, dashboard=args.dashboard,
    )


# ---- the data the trials load, checked on the driver -----------------------------------------------------------
def check_data(shared: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]]) -> None:
    """Raise DatasetNotFoundError (a FileNotFoundError: the jobs exit 2 with it) naming every dataset, ID or OoD,
    that a trial of these conditions (grid_conditions) would not find under its data root, each with the message
    `ncood train` prints for it (ncood.data.check_available, the loaders' own file lists). Called by the jobs before
    Ray, MLflow or the storage are touched: otherwise every trial fails on it (and is retried) and the message is
    lost among Ray's tracebacks. Reads only: no download, no Fashion-MNIST link (the trial makes it). Trials with
    download=True fetch their own data and are not checked. On a Ray cluster (RAY_ADDRESS set, as `ray job submit`
    sets it) the trials read the data root on the worker nodes, which the driver may not see: a missing set is a
    warning there, not an error."""
    from ncood.data import DatasetNotFoundError, check_available

    needed: dict[tuple[str, str], bool] = {}  # (root, dataset) -> loaded as ID by some trial (needs more files)
    for c in conditions:
        cfg = TrialConfig.from_dict({**shared, **c, "seed": 0})
        for name in () if cfg.download else (cfg.dataset, *cfg.ood_sets):
            key = (cfg.data_root, name)
            needed[key] = needed.get(key, False) or name == cfg.dataset
    missing = []
    for (root, name), as_id in needed.items():
        try:
            check_available(name, root, as_id=as_id)
        except DatasetNotFoundError as e:
            missing.append(str(e))
    if missing and os.environ.get("RAY_ADDRESS"):
        print("ncood: warning: the driver does not see these datasets; the sweep starts anyway, and its trials fail "
              "on any worker node that lacks them too:\n" + "\n\n".join(missing), file=sys.stderr)
    elif missing:
        raise DatasetNotFoundError("\n\n".join(missing))


# ---- --dry-run: the resolved grid ----------------------------------------------------------------------------------
_DRY_COLUMNS = ("condition", "dataset", "arch", "width", "l2", "spectral_norm", "sn_coeff", "leaky_gap", "epochs",
                "batch_size", "lr", "milestones", "loss", "label_smoothing", "etf_projector", "entropy_reg")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def describe_grid(preset: str, overrides: Mapping[str, Any] | None = None,
                  seeds: int | Sequence[int] | None = None) -> str:
    """Every condition of the grid as its trials will run it (preset + overrides, validated), the seeds, and the
    fields shared by all trials: what `--dry-run` prints. Needs neither Ray nor MLflow."""
    shared, conditions = grid_conditions(preset, overrides)
    seeds_ = seed_list(preset, seeds)
    configs = [TrialConfig.from_dict({**shared, **c, "seed": seeds_[0]}) for c in conditions]
    rows = [list(_DRY_COLUMNS)]
    for cfg in configs:
        values = {**cfg.to_dict(), "condition": cfg.condition, "milestones": "/".join(map(str, cfg.milestones))}
        rows.append([str(values[c]) for c in _DRY_COLUMNS])
    shown = set(_DRY_COLUMNS) | set(AXES)
    rest = {k: v for k, v in shared.items() if k not in shown}
    head = (f"preset {preset}: {GRIDS[preset].help}\n{len(conditions)} conditions x {len(seeds_)} seeds "
            f"({_ranges(seeds_)}) = {len(conditions) * len(seeds_)} trials")
    tail = "shared by every trial: " + ", ".join(f"{k}={v}" for k, v in sorted(rest.items()))
    return f"{head}\n\n{_table(rows)}\n\n{tail}"


def _ranges(seeds: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> 'seeds 0-2, 5'."""
    parts, start = [], None
    for i, s in enumerate(seeds):
        if start is None:
            start = s
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            parts.append(f"{start}" if start == s else f"{start}-{s}")
            start = None
    return "seeds " + ", ".join(parts)


# ---- the end-of-sweep summary -------------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def summary_table(runs: list) -> str:
    """One row per condition: seeds finished / stopped early / failed / other, test accuracy and GMM AUROC per OoD
    set (runs that finished their epochs, last logged value). A trial ASHA stopped (tune_jobs/search.py) ends its run
    FINISHED with the tag stopped_early_at_epoch: it is counted apart and kept out of the means, which would
    otherwise mix epoch-1 accuracies with full runs'."""
    from ncood import runs_query, tracking

    by_cond: dict[str, list] = defaultdict(list)
    for run in runs:
        by_cond[run.data.tags.get(keys.TAG_CONDITION, "?")].append(run)
    # Columns in the trials' dataset order (param ood_sets), as the aggregate tables have them: the metric dicts'
    # key order differs between stores (a tracking server returns them sorted by name, sqlite as logged).
    scored = [p[0] for r in runs for k in r.data.metrics if (p := keys.parse_ood_key(k)) and p[1:] == ("gmm", "auroc")]
    configured = [s for r in runs for s in r.data.params.get("ood_sets", "").split(",") if s]
    ood_sets = [s for s in dict.fromkeys([*configured, *scored]) if s in scored]
    head = ["condition", "finished", "stopped early", "failed", "other", "test accuracy"] + [
        f"gmm AUROC {s}" for s in ood_sets]
    rows = [head]
    for cond in sorted(by_cond):
        group = by_cond[cond]
        ended = [r for r in group if r.info.status == tracking.FINISHED]
        done = [r for r in ended if not runs_query.stopped_early(r)]
        failed = sum(r.info.status == tracking.FAILED for r in group)
        row = [cond, str(len(done)), str(len(ended) - len(done)), str(failed), str(len(group) - len(ended) - failed),
               _mean_sd([r.data.metrics[keys.ACC_TEST] for r in done if keys.ACC_TEST in r.data.metrics])]
        for s in ood_sets:
            vals = [r.data.metrics[k] for r in done if (k := keys.ood_key(s, "gmm", "auroc")) in r.data.metrics]
            row.append(f"{statistics.mean(vals):.4f}" if vals else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def print_report(result: SweepResult, ui: bool = True) -> None:
    """The trial accounting per condition and where the runs are; ui=False when the aggregation prints the UI
    command after its summary (tune_jobs/ablation.py), so it appears once."""
    from ncood import tracking

    print("\n" + summary_table(result.runs) + "\n")
    if result.num_errors:
        print(f"{result.num_errors} of {result.num_trials} trials failed (their runs carry an `error` tag)")
    if result.interrupted:
        print(f"Interrupted. Continue with: --resume {result.experiment_path}")
    print(f"MLflow: experiment {result.ref.experiment_id}, sweep run {result.ref.parent_run_id}, "
          f"store {result.ref.tracking_uri}")
    if ui:
        print("Open the MLflow UI on this store:\n  " + tracking.ui_command(result.ref.tracking_uri))


def exit_code(result: SweepResult) -> int:
    """0: every trial finished; 1: some failed (the rest finished); 130: interrupted (like Ctrl+C)."""
    from ncood import tracking

    if result.interrupted:
        return 130
    finished = sum(r.info.status == tracking.FINISHED for r in result.runs)
    return 0 if result.num_errors == 0 and finished == result.num_trials else 1


def register_champion(result: SweepResult) -> None:
    """The end of tune_jobs/ablation.py: register the best condition's median-seed model as
    ncood-ood-scorer@champion (ncood.serve.register), so `ncood serve` works right after the sweep. A failure is
    reported with the one command that redoes it, not raised: the sweep itself succeeded. On a shared server whose
    ncood-ood-scorer is another user's, redoing it would be refused again: the message says to use a model name
    of one's own instead (ModelNotYours)."""
    from mlflow.tracking import MlflowClient

    from ncood import tracking
    from ncood.serve.register import ModelNotYours, RegisterError, register_best

    uri = result.ref.tracking_uri
    name = MlflowClient(uri).get_experiment(result.ref.experiment_id).name
    ncood = tracking.executable("ncood")
    redo = f"{ncood} register --experiment {name} --tracking-uri {uri}"
    try:
        reg = register_best(name, tracking_uri=uri)
    except ModelNotYours as e:
        print(f"Champion not registered: {e}. (This job always registers as ncood-ood-scorer; --no-register "
              f"skips it.)")
        return
    except Exception as e:  # noqa: BLE001 - e.g. RegisterError (no scorer model), an unreachable store
        kind = "" if isinstance(e, RegisterError) else f"{type(e).__name__}: "
        print(f"Champion not registered ({kind}{e}); register it with:\n  {redo}")
        return
    print(f"Champion: {reg.model_name} version {reg.version} @{reg.alias} = {reg.choice.run.run_name} (median seed "
          f"of the best condition by mean {reg.choice.metric}). Serve it: {ncood} serve --tracking-uri {uri}")
