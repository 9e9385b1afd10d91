"""Resident memory of a reused Ray worker across the trials of a grid (Tune's `reuse_actors`, which ncood sweeps use).

    python bench/memory.py                    # 30 trials (15 seeds x L2 off/on), width 8, 3 epochs, all OoD sets
    python bench/memory.py --trials 6 --json  # shorter; the last stdout line is one JSON object

One local Ray with one CPU and one trial at a time, so a single worker process runs every trial in turn (the
bench checks that it did). The trials are the default grid's (digits, width-8 ResNet18, all three OoD sets,
every artifact and the `ood_scorer` model logged into a sqlite store), shortened to --epochs with an evaluation
every epoch. After each trial completes, the driver reads the worker's resident set size (RSS) and its unique set
size (USS: the pages only that process holds) with psutil. The bench's trainable is ncood's own train_trial; it
only writes the worker's pid to a file first so the driver knows which process to read.

Acceptance (issue 17): RSS after the last trial within 10% of RSS after trial 3. Memory figures and the load of
the machine they were taken on are in bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from ray import tune

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without `pip install -e .`

from _common import git_sha, scratch_dir  # noqa: E402
from ncood import tracking  # noqa: E402
from ncood.tune import SweepSettings, SweepSpec, make_param_space, run_sweep  # noqa: E402
from ncood.tune.sweep import ablation_columns  # noqa: E402
from ncood.tune.trial import TrialRuntime, train_trial  # noqa: E402

PID_FILE_ENV = "NCOOD_BENCH_PID_FILE"  # where bench_trial writes its worker's pid (set before Ray starts)


def bench_trial(config: dict[str, Any], runtime: TrialRuntime) -> None:
    """ncood's trainable, after noting which process runs it."""
    Path(os.environ[PID_FILE_ENV]).write_text(str(os.getpid()))
    train_trial(config, runtime)


class RssProbe(tune.Callback):
    """After each completed trial: the worker's RSS and USS (MiB)."""

    def __init__(self, pid_file: str) -> None:
        self.pid_file, self.rows = pid_file, []

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        pid = int(Path(self.pid_file).read_text())
        time.sleep(0.5)  # the worker finishes Tune's bookkeeping for the trial
        mem = psutil.Process(pid).memory_full_info()
        self.rows.append({"trial": len(self.rows) + 1, "pid": pid, "rss_mib": mem.rss / 2**20,
                          "uss_mib": mem.uss / 2**20})
        print(f"trial {len(self.rows):3d}  worker {pid}  RSS {mem.rss / 2**20:8.1f} MiB  "
              f"USS {mem.uss / 2**20:8.1f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="trials (seeds x L2 off/on; even), default 30")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    args = parser.parse_args(argv)
    if args.trials < 4 or args.trials % 2:
        parser.error("--trials: an even number >= 4 (seeds x L2 off/on; the acceptance compares with trial 3)")
    with scratch_dir("ncood-bench-memory-") as scratch:
        rc = measure(args, scratch.path)
        scratch.ok = rc == 0
    return rc


def measure(args: argparse.Namespace, root: Path) -> int:
    """The bench run in scratch folder `root`; 0 when every trial finished on one worker."""
    os.environ[PID_FILE_ENV] = str(root / "worker.pid")  # before Ray starts: its workers inherit it
    os.environ.pop("RAY_ADDRESS", None)
    probe = RssProbe(os.environ[PID_FILE_ENV])
    space = make_param_space("default", {"epochs": [args.epochs], "width": args.width, "eval_every": 1},
                             seeds=args.trials // 2)
    settings = SweepSettings(experiment="bench-memory", tracking_uri=f"sqlite:///{root}/mlflow.db",
                             storage_path=str(root / "ray"), max_concurrent=1, num_cpus=1, progress=False)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = run_sweep(settings, SweepSpec(space, callbacks=[probe], trainable=bench_trial,
                                           metric_columns=ablation_columns(space)))  # as the ablation job
    rows = probe.rows
    finished = sum(r.info.status == tracking.FINISHED for r in result.runs)
    pids = {r["pid"] for r in rows}
    third, last = rows[2]["rss_mib"], rows[-1]["rss_mib"]
    out = {"benchmark": "memory", "git": git_sha(), "scratch_dir": str(root), "trials": len(rows), "finished": finished,
           "one_worker": len(pids) == 1, "epochs": args.epochs, "width": args.width, "rows": rows,
           "rss_after_3_mib": third, "rss_after_last_mib": last, "rss_growth_3_to_last": last / third - 1,
           "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "cpus": os.cpu_count(),
           "wall_s": time.perf_counter() - t0, "python": sys.version.split()[0],
           "torch": __import__("torch").__version__, "ray": __import__("ray").__version__}
    print(f"\n{len(rows)} trials ({finished} finished) on {'one reused worker' if len(pids) == 1 else pids}: RSS "
          f"after trial 3 {third:.1f} MiB, after trial {len(rows)} {last:.1f} MiB "
          f"({100 * (last / third - 1):+.1f}%); load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    if args.json:
        print(json.dumps(out))
    return 0 if finished == len(rows) == args.trials and len(pids) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
