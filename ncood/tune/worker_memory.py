"""Flat memory on reused Ray workers: what a worker keeps between trials, and how ncood gives it back.

ncood sweeps run with Tune's `reuse_actors`: one worker process runs trial after trial. Measured with
bench/memory.py (bench/README.md has the figures): without the measures below a worker's resident memory grew by
about 25 MB per trial for the first dozen trials of the default grid, then stayed some 300 MB above where it
started. Python objects were not the cause (about 60 more live objects per trial, gc finds no garbage); the growth
sat in anonymous mappings of 44-64 MB, glibc's malloc arenas. A Ray worker runs many threads (Ray's own, and Tune
runs each trial in a new thread), glibc gives threads their own arenas (up to 8 per core), and memory freed inside
an arena stays mapped and fragmented there. Two measures together keep the worker flat:

- MALLOC_ARENA_MAX=2 in every worker's environment (`WORKER_ENV`; it must be set before the process starts, so
  ncood.tune.cluster.init_ray passes it in the job's Ray runtime_env, unless the node already sets it): freed
  memory is reused by the next trial instead of spread over fresh arenas. Alone it still grew ~5 MB per trial.
- `release()` when a trial ends (and when the next one starts, for a trial that Tune stopped early: its thread must
  end at once): a garbage collection, the CUDA caching allocator's cached blocks back to the
  driver (a trial on a shared GPU must not hold the next one's memory), and glibc's malloc_trim(0), which returns
  the free pages of every arena to the OS. Alone it still grew ~10 MB per trial.

Hand-written with ctypes because no maintained library wraps malloc_trim; on a libc without it (musl, macOS) the
trim is skipped.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache

import torch

WORKER_ENV = {
    "MALLOC_ARENA_MAX": "2",  # glibc: at most 2 malloc arenas per process (default 8 x cores)
    # Tune reuses a worker only if the finished trial's thread ends within this many seconds (Ray's default: 2);
    # release() and the trial's own clean-up take longer than that on a busy node, and the next trial then fails
    # with "Could not re-use actor".
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "30",
}


@cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


FULL_COLLECTION_EVERY = 8  # release() calls; a trial makes one or two
_releases = 0


def release() -> None:
    """Give back what a finished trial left behind: garbage, cached CUDA blocks, free malloc pages.

    The collection is cheap because of gc.freeze(): what survives it (modules, caches: ~700k objects in a worker
    that imported Ray, MLflow and torch) moves to the permanent generation, so the next collection scans only what
    was allocated since. A full collection over every object took 0.5-3.5 s on a loaded 2-core machine, and a trial
    made two. Frozen objects are still freed by reference counting; a cycle among them that dies later (e.g. Tune's
    bookkeeping of a finished trial) waits for the next full collection: every FULL_COLLECTION_EVERY-th call
    unfreezes everything first, so such garbage stays bounded."""
    global _releases
    _releases += 1
    if _releases % FULL_COLLECTION_EVERY == 0:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
