"""Grid benchmark: the sweep's wall time next to the compute its trials need, and where a trial's extra time goes.

    bare compute = (mean bare trial time) x trials / concurrency
    ratio        = sweep wall time / bare compute        (1.0: the sweep costs only its trials' own compute)
    ratio_paired = the same with the bare trials run `concurrency` at a time in plain processes (paired_times):
                   what is left once the machine's own cost of running trials side by side is counted as compute
    ratio_cli    = the same with each trial run as a user runs one without a sweep, `ncood train` from the shell
                   (cli_times: a new process per trial, its imports and first data load included): the bare trial
                   of issue #19's own figure ("one bare trial (`ncood train` with the same settings) takes ...")

A bare trial is `ncood train`'s in-process run of the same config (ncood.pipeline.run_trial: data, model, every
epoch with its evaluation, the final artifacts), timed here for --sample trials (or all) with the trial's torch
threads, warm (after one untimed trial: the lazy imports and first data load of a process are the sweep's overhead,
paid once per Ray worker). The paired arm runs the same trials `concurrency` at a time, each in a plain process of
its own, also warm: two trials side by side share the machine's caches and memory bandwidth, a cost of the hardware
that the 1.0 of `ratio` leaves out (bench/README.md has the figures). The sweep is ncood's own (run_sweep with the
ablation's param space, a local Ray started first and timed apart); with --profile one more sweep runs each trial
under cProfile inside its Ray worker (not counted in the ratio: the profiler slows Python code) and the table splits
the trials' time into MLflow run creation, model logging, run artifacts, checkpoint writes, Ray reporting,
evaluation and data + model set-up (cumulative seconds of those functions, summed over the trials).

    python bench/grid.py                       # the default grid (30 trials), 3 runs: 8-15 minutes on 2 cores
    python bench/grid.py --seeds 2 --epochs 3 --runs 3 --profile
    python bench/grid.py --smoke --json        # 2 trials of 1 epoch, one profiled run (tests/test_bench.py)

Every sweep of a bench run writes to one sqlite store whose schema is created before the first timed sweep (a
one-time cost of a new store, 5-15 s on 2 cores, not a cost of a sweep). --smoke checks that the bench runs and
adds up, not its figures: its single sweep is also the profiled one (the profiler slows it).

Every figure is the median over --runs runs; the header gives the load (os.getloadavg) and the versions.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from _common import environment, print_json, scratch_dir
from ncood import tracking
from ncood.pipeline import run_trial
from ncood.tune import SweepSettings, SweepSpec, make_param_space, run_sweep
from ncood.tune.cluster import init_ray
from ncood.tune.grid import GRIDS, config_from_tune
from ncood.tune.sweep import ablation_columns
from ncood.tune.trainable import TrialRuntime
from ncood.tune.trial import train_trial

PROFILE_DIR_ENV = "NCOOD_BENCH_PROFILE_DIR"


def store_uri(root: Path) -> str:
    """The sqlite store every sweep of this bench run writes to (one experiment per sweep)."""
    return f"sqlite:///{root}/mlflow.db"
# component -> (a path fragment of the function's file, its name): cumulative time inside the trial's thread
COMPONENTS = {
    "mlflow run creation": ("ncood/tracking.py", "start"),
    "model logging": ("ncood/serve/package.py", "log_ood_scorer"),
    "run artifacts": ("ncood/tracking.py", "log_artifacts"),
    "checkpoint writes": ("ncood/train.py", "save_checkpoint"),
    "ray reporting": ("ray/tune/trainable/trainable_fn_utils.py", "report"),
    "evaluation": ("ncood/evaluate.py", "evaluate"),
    "data + model set-up": ("ncood/pipeline.py", "build_trial"),
    "trial total": ("ncood/tune/trial.py", "train_trial"),
}


def profiled_trial(config: dict[str, Any], runtime: TrialRuntime) -> None:
    """ncood's trainable under cProfile (this thread), its stats written to $NCOOD_BENCH_PROFILE_DIR."""
    prof = cProfile.Profile()
    try:
        prof.runcall(train_trial, config, runtime)
    finally:
        prof.dump_stats(Path(os.environ[PROFILE_DIR_ENV]) / f"{config['seed']}-{time.time_ns()}.prof")


def components(prof_dir: Path) -> dict[str, float]:
    """{component: cumulative seconds summed over the trials' profiles}."""
    out = dict.fromkeys(COMPONENTS, 0.0)
    for path in sorted(prof_dir.glob("*.prof")):
        stats = pstats.Stats(str(path)).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
        for what, (frag, name) in COMPONENTS.items():
            out[what] += sum(v[3] for (f, _, n), v in stats.items() if n == name and frag in f)
    return out


def _sampled_configs(space: dict[str, Any], sample: int) -> list:
    """The grid's first `sample` trials, in the sweep's order (conditions alternate), on the CPU where no GPU is."""
    conds, seeds = space["condition"]["grid_search"], space["seed"]["grid_search"]
    configs = [config_from_tune({**space, "condition": c, "seed": s}) for s in seeds for c in conds][:sample]
    return [cfg.replace(device="cpu") if cfg.device == "auto" and not torch.cuda.is_available() else cfg
            for cfg in configs]


def _bare_trial(cfg, out: Path, threads: int) -> float:
    """Seconds of one bare trial (run_trial) with `threads` torch threads, in this process."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        run_trial(cfg, out, progress=False)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(saved)


def bare_times(space: dict[str, Any], sample: int, threads: int, root: Path) -> list[float]:
    """Seconds of `sample` bare trials, one after another in this process (nothing else running)."""
    return [_bare_trial(cfg, root / f"bare-{i}", threads) for i, cfg in enumerate(_sampled_configs(space, sample))]


def paired_times(space: dict[str, Any], sample: int, threads: int, root: Path, concurrency: int,
                 warm: bool = True) -> list[float]:
    """Seconds of bare trials run `concurrency` at a time, each in its own plain process (spawned: no Ray, no
    MLflow), each timed inside its process: the grid's first trials, `sample` rounded up to a multiple of
    `concurrency`. Against bare_times this is the machine's own cost of running trials side by side (shared caches
    and memory bandwidth, or vCPUs that share a physical core), which no sweep can avoid; sweep wall / (mean paired
    trial x trials / concurrency) is what the sweep adds beyond it. warm: every process first runs one untimed trial
    (its lazy imports and first data load), as the bare trials of this process are warm, all starting together, and
    `concurrency - 1` untimed trials follow the timed ones, so that every timed trial has company to its end."""
    timed = -(-max(sample, 1) // concurrency) * concurrency
    configs = _sampled_configs(space, timed)
    configs += [configs[0]] * (concurrency - 1 if warm else 0)  # the tail: untimed
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of this process's Ray
    start = (ctx.Barrier(concurrency), configs[0] if warm else None, root, threads)
    with ProcessPoolExecutor(concurrency, mp_context=ctx, initializer=_start_paired, initargs=start) as pool:
        # a failed warm-up or a dead worker raises BrokenProcessPool here rather than waiting forever
        times = list(pool.map(_bare_trial, configs, [root / f"paired-{i}" for i in range(len(configs))],
                              [threads] * len(configs)))
    return times[:timed]


def train_command(cfg, out: Path) -> list[str]:
    """`python -m ncood train` with every TrialConfig field of `cfg` as its flag (what a user types for one trial)."""
    cmd = [sys.executable, "-m", "ncood", "train", "--out", str(out), "--no-progress"]
    for name, value in cfg.to_dict().items():
        if value is None:  # the preset's default (train_subset, lr_steps)
            continue
        text = (("on" if value else "off") if isinstance(value, bool)
                else ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
        cmd += ["--" + name.replace("_", "-"), text]
    return cmd


def cli_times(space: dict[str, Any], sample: int, threads: int, root: Path) -> list[float]:
    """Seconds of `sample` trials each run as `ncood train` in a new process, one after another, timed from the
    outside (start-up, imports, data load, training, evaluation, artifacts): what a trial costs a user who runs it
    without a sweep. The process gets `threads` threads (OMP_NUM_THREADS, as a Ray trial gets its CPUs); the config
    it ran (its summary.json) must be the sampled one."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    times = []
    for i, cfg in enumerate(_sampled_configs(space, sample)):
        out = root / f"cli-{i}"
        t0 = time.perf_counter()
        proc = subprocess.run(train_command(cfg, out), env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"`ncood train` exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
        ran = json.loads((out / "summary.json").read_text())["config"]
        if ran != cfg.to_dict():
            raise RuntimeError(f"`ncood train` ran {ran}, not the sampled trial {cfg.to_dict()}")
    return times


def _start_paired(ready, warm_cfg, root: Path, threads: int) -> None:
    """A paired_times process, once it has imported this module: wait for the others (a worker that never comes
    breaks the barrier after 10 minutes), then the warm-up trial."""
    ready.wait(timeout=600)
    if warm_cfg is not None:
        _bare_trial(warm_cfg, root / f"warm-{os.getpid()}", threads)


# The bare arms: arm -> (the key of its ratio, how a run's line names its trials; {c} = the concurrency)
ARMS = {"bare": ("ratio", "bare trial"), "paired": ("ratio_paired", "bare trials {c} at a time, each"),
        "cli": ("ratio_cli", "`ncood train` per trial")}


def arm_figures(arm: str, times: list[float], sweep_s: float, n_trials: int, concurrency: int) -> dict[str, Any]:
    """One run's figures of a bare arm: its trial times, their compute (mean x trials / concurrency), the ratio."""
    compute = statistics.mean(times) * n_trials / concurrency
    return {f"{arm}_trial_s": times, f"{arm}_compute_s": compute, ARMS[arm][0]: sweep_s / compute}


def one_sweep(space: dict[str, Any], root: Path, args, run: int | str, profile: bool = False) -> dict[str, Any]:
    """One sweep as the ablation job runs the preset: its Ray checkpoint cadence and kept checkpoint epochs
    (tune_jobs/ablation.py's defaults, ncood.tune.grid.GRIDS), its Tune columns; timed from the call."""
    grid = GRIDS[args.preset]
    settings = SweepSettings(experiment=f"bench-grid-{run}", tracking_uri=store_uri(root),
                             storage_path=str(root / f"ray-{run}"), cpus_per_trial=args.cpus_per_trial,
                             max_concurrent=args.max_concurrent, progress=False,
                             checkpoint_every=grid.checkpoint_every, keep_checkpoint_epochs=grid.keep_checkpoint_epochs)
    t0 = time.perf_counter()
    # the ablation job's columns: its trials report the same keys to Tune (TrialRuntime.tune_result)
    result = run_sweep(settings, SweepSpec(param_space=space, metric_columns=ablation_columns(space),
                                           trainable=profiled_trial if profile else train_trial))
    return {"sweep_s": time.perf_counter() - t0, "trials": result.num_trials, "errors": result.num_errors}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--seeds", type=int, default=None, help="seeds per condition (default: the preset's)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--sample", type=int, default=4, help="bare trials timed per run (the first N of the grid)")
    p.add_argument("--runs", type=int, default=3, help="runs; every figure is the median over them")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--profile", action="store_true", help="cProfile every trial inside Ray; component table")
    p.add_argument("--smoke", action="store_true", help="2 trials of 1 epoch, one run, profiled (tests)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs, args.sample, args.runs, args.profile = 1, 1, 1, 1, True
    overrides = {"epochs": [args.epochs]} if args.epochs else {}
    space = make_param_space(args.preset, overrides, args.seeds)
    n_trials = len(space["condition"]["grid_search"]) * len(space["seed"]["grid_search"])
    with scratch_dir("ncood-bench-grid-") as scratch:
        rc = measure(args, space, n_trials, scratch.path)
        scratch.ok = rc == 0
    return rc


def measure(args: argparse.Namespace, space: dict[str, Any], n_trials: int, root: Path) -> int:
    """The bench run in scratch folder `root`: the timed runs, the profiled sweep, the printed figures; 0 when
    every sweep finished without errors."""
    prof_dir = root / "profiles"
    prof_dir.mkdir()
    os.environ[PROFILE_DIR_ENV] = str(prof_dir)  # before Ray starts: its workers inherit it
    os.environ.pop("RAY_ADDRESS", None)
    load_before = [round(v, 2) for v in os.getloadavg()]  # before the bench's own work below
    tracking.prepare_experiment("bench-grid-store", store_uri(root))  # the new store's schema, before any timing
    t0 = time.perf_counter()
    init_ray(args.num_cpus)
    ray_start_s = time.perf_counter() - t0
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    concurrency = min(n_trials, args.max_concurrent or n_trials, max(1, int(cpus // args.cpus_per_trial)))
    runs = []
    threads, sample = max(1, int(args.cpus_per_trial)), min(args.sample, n_trials)
    warm = not args.smoke  # the smoke checks that the bench adds up, not its figures: no warm-up trials
    if warm:  # one untimed trial first: every timed bare trial runs warm, as in paired_times
        bare_times(space, 1, threads, root / "warm")
    for run in range(args.runs):
        times = {"bare": bare_times(space, sample, threads, root / f"bare-{run}"),
                 "paired": paired_times(space, sample, threads, root / f"paired-{run}", concurrency, warm),
                 "cli": cli_times(space, sample, threads, root / f"cli-{run}")}
        sweep = one_sweep(space, root, args, run, profile=args.smoke)
        row = dict(sweep)
        for arm, t in times.items():
            row.update(arm_figures(arm, t, sweep["sweep_s"], n_trials, concurrency))
        runs.append(row)
        print(f"run {run + 1}: sweep {sweep['sweep_s']:.1f} s; " + "; ".join(
            f"{ARMS[arm][1].format(c=concurrency)} {statistics.mean(t):.1f} s (x {n_trials} / {concurrency} = "
            f"{row[f'{arm}_compute_s']:.1f} s), ratio {row[ARMS[arm][0]]:.3f}" for arm, t in times.items()), flush=True)
    profiled = (runs[0] if args.smoke  # the smoke's one sweep was the profiled one
                else one_sweep(space, root, args, "profiled", profile=True) if args.profile else None)
    ray.shutdown()
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("sweep_s", *(k for arm, (ratio, _) in ARMS.items() for k in (f"{arm}_compute_s", ratio)))}
    comp = components(prof_dir) if args.profile else {}
    result = {"bench": "grid", "preset": args.preset, "trials": n_trials, "concurrency": concurrency,
              "ray_start_s": ray_start_s, "runs": runs, **{f"median_{k}": v for k, v in med.items()},
              "components_s": comp, "profiled_trials": len(list(prof_dir.glob("*.prof"))), "profiled_sweep": profiled,
              "scratch_dir": str(root), "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()],
              "versions": {n: version(n) for n in ("ray", "mlflow", "torch")}, "environment": environment(
                  torch.device("cpu"))}
    print(f"grid benchmark: preset {args.preset}, {n_trials} trials, {concurrency} at a time; load average before "
          f"{load_before} after {result['load_after']}; ray {result['versions']['ray']}, mlflow "
          f"{result['versions']['mlflow']}, torch {result['versions']['torch']}; local Ray start {ray_start_s:.1f} s")
    print(f"median of {args.runs} run(s): sweep wall {med['sweep_s']:.1f} s, sum of bare trials / concurrency "
          f"{med['bare_compute_s']:.1f} s, ratio {med['ratio']:.3f} (target <= 1.15); the same with the bare "
          f"trials {concurrency} at a time in plain processes {med['paired_compute_s']:.1f} s, ratio "
          f"{med['ratio_paired']:.3f} (what the sweep adds beyond the machine's own cost of running trials side by "
          f"side); against `ncood train` run per trial from the shell {med['cli_compute_s']:.1f} s, ratio "
          f"{med['ratio_cli']:.3f} (the issue's bare trial: a new process each, imports and data load included)")
    if comp:
        total = comp["trial total"] or 1.0
        which = ("the smoke's sweep, under cProfile (the profiler slows Python code: the ratio above is not a "
                 "figure)" if args.smoke else "one more sweep under cProfile (not in the ratio: the profiler slows "
                 "Python code)")
        print(f"inside the trials of {which}, {profiled['sweep_s']:.1f} s, {result['profiled_trials']} trials, "
              f"cumulative s summed:")
        for what, s in comp.items():
            print(f"  {what:22s} {s:9.2f} s  {100 * s / total:5.1f}%")
    if args.json:
        print_json(result)
    return 0 if all(r["errors"] == 0 for r in runs + ([profiled] if profiled and not args.smoke else [])) else 1


if __name__ == "__main__":
    sys.exit(main())
