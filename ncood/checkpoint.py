"""Checkpoint files that cannot carry code: written with `torch.save`, read only with `torch.load(weights_only=True)`.

Checkpoints come back from places other people can write to: Ray storage (NFS, S3) when a trial is retried or a
sweep resumed, MLflow artifacts on a shared server (the NC intervention, serving). A full unpickler runs any
callable a file names (`__reduce__`), so ncood never uses one: `load` accepts only what PyTorch's weights-only
unpickler accepts (tensors, numbers, strings, bools, None, lists, tuples, dicts/OrderedDicts, and the few
PyTorch types its allow-list holds, e.g. the `collections.Counter` of MultiStepLR's milestones) and refuses
anything else with an error naming the file.

What ncood writes fits that set: a trainer checkpoint (ncood.train.Trainer.state_dict) is the config as a dict,
the epoch, the metric history (floats), the model/optimizer/scheduler state dicts, and RNG states as uint8
tensors (torch.Generator.get_state, torch.get_rng_state, torch.cuda.get_rng_state_all; no numpy or Python
`random` state is kept: ncood draws nothing from them). Checkpoints written by earlier ncood versions hold the
same types, so they load unchanged; a file holding anything else (an object pickled by some other tool, or a
tampered file) is refused and has to be recreated by the code that wrote it (ncood never unpickles it).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that only a full (code-running) unpickler could build; it was not loaded."""


def load(path: str | Path, map_location: torch.device | str | None = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a file that needs anything more raises UnsafeCheckpointError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"refused to load checkpoint {path}: it holds objects other than tensors, numbers, strings, lists and "
            f"dicts ({first}). Loading it would run code named in the file. ncood writes only plain checkpoints: "
            f"recreate this one with ncood (retrain or rerun the trial), and check who can write to where it came "
            f"from (Ray storage, MLflow artifacts)."
        ) from e


def save(obj: Any, path: str | Path) -> Path:
    """torch.save with an atomic replace (tmp + rename): a crash mid-save never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path
