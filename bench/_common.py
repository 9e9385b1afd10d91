"""Shared helpers of the benchmarks in bench/: side-by-side timing, the environment line, the JSON result line, the
scratch folder of a bench run (removed after success, kept after a failure).

Every figure says where it was measured (docs/architecture.md#provenance): `environment()` gives device, torch and CPU-thread count.
Timings compare implementations in the same process, interleaved (A, B, A, B, ...), so a shared or throttled
machine slows both alike; the ratio of medians is the reported speedup (reference time / ncood time).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

REPO = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of one call, synchronizing the device before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def side_by_side(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> tuple[dict, dict]:
    """Run each fn `repeats` times, interleaved; returns ({name: {median_s, best_s, all_s}}, {name: last result})."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t, results[name] = timed(fn, device)
            times[name].append(t)
    summary = {k: {"median_s": statistics.median(v), "best_s": min(v), "all_s": v} for k, v in times.items()}
    return summary, results


class ScratchDir:
    """A bench run's scratch folder (stores, Ray results, profiles): removed when the run succeeds, kept and named on
    stderr when it fails (an exception, or `ok` left False) or when NCOOD_BENCH_KEEP=1, for inspection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ok = False  # the bench sets it once every figure came out right


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[ScratchDir]:
    """A new folder under the system's temp dir, named `prefix`*, as a ScratchDir; see ScratchDir for its fate."""
    scratch = ScratchDir(Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        yield scratch
    finally:
        if scratch.ok and os.environ.get("NCOOD_BENCH_KEEP") != "1":
            shutil.rmtree(scratch.path, ignore_errors=True)
        else:
            why = "NCOOD_BENCH_KEEP=1" if scratch.ok else "the run failed or was interrupted"
            print(f"bench: kept {scratch.path} ({why}): its store, Ray results and profiles are there to inspect; "
                  f"delete it after", file=sys.stderr)


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"device": name, "device_type": device.type, "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None, "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "git": git_sha(),
            "date": time.strftime("%Y-%m-%d")}


def print_json(obj: dict[str, Any]) -> None:
    """The machine-readable result: one JSON object, the last line of stdout."""
    print(json.dumps(obj, default=float), flush=True)
