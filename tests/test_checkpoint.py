"""Checkpoints cannot carry code: what ncood writes loads with weights_only=True, and a file whose unpickling would
run code is refused, naming the file, without running it."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from ncood import checkpoint
from ncood.checkpoint import UnsafeCheckpointError
from ncood.config import make_config
from ncood.ood import ClassGaussians
from ncood.pipeline import build_trial, save_artifacts

NCOOD = Path(__file__).resolve().parents[1] / "ncood"


class MakesADirectory:
    """Unpickling this object calls os.mkdir(marker): a stand-in for any code an attacker could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _malicious_files(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """{format: (file, marker it would create)}: torch's zip format, and a legacy plain pickle."""
    out = {}
    for fmt in ("zip", "legacy"):
        marker, path = tmp_path / f"ran-{fmt}", tmp_path / f"evil-{fmt}.pt"
        payload = {"model": {"w": torch.zeros(2)}, "epoch": 3, "config": MakesADirectory(marker)}
        if fmt == "zip":
            torch.save(payload, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(payload, f)
        out[fmt] = path, marker
    return out


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, fmt):
    path, marker = _malicious_files(tmp_path)[fmt]
    with pytest.raises(UnsafeCheckpointError, match="refused to load checkpoint .*" + path.name) as info:
        checkpoint.load(path)
    assert isinstance(info.value, pickle.UnpicklingError)  # callers that catch unpickling errors still do
    assert not marker.exists()
    # the file is a real attack: a full unpickler runs it (which is why ncood never uses one). For the legacy file
    # torch unpickles the payload, then complains that it lacks torch's header: too late.
    try:
        torch.load(path, weights_only=False)
    except RuntimeError:
        assert fmt == "legacy"
    assert marker.is_dir()


def test_every_loader_refuses_it(tmp_path):
    path, marker = _malicious_files(tmp_path)["zip"]
    trial = build_trial(make_config("digits", width=2, epochs=1, eval_every=0, device="cpu", ood_sets=()),
                        progress=False)
    with pytest.raises(UnsafeCheckpointError, match=path.name):
        trial.trainer.load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match=path.name):
        ClassGaussians.load(path)
    assert not marker.exists()


def test_what_ncood_writes_loads_weights_only(tmp_path):
    """The trainer checkpoint (after an evaluation, so the history holds every metric) and the class Gaussians."""
    cfg = make_config("digits", width=2, epochs=2, eval_every=1, device="cpu")
    trial = build_trial(cfg, progress=False)
    trial.trainer.fit()
    paths = save_artifacts(trial, tmp_path)
    state = torch.load(paths["checkpoint"], weights_only=True)  # torch itself, not only our wrapper
    assert state["epoch"] == 2 and state["config"] == cfg.to_dict() and len(state["history"]) == 2
    assert isinstance(state["torch_rng"], torch.Tensor) and isinstance(state["generator"], torch.Tensor)
    torch.load(paths["gaussians"], weights_only=True)
    resumed = build_trial(cfg, progress=False)
    resumed.trainer.load_checkpoint(paths["checkpoint"])
    assert resumed.trainer.epoch == 2


def test_no_full_unpickling_in_ncood():
    """`grep -rn "weights_only=False" ncood` finds nothing, and every torch.load goes through ncood.checkpoint."""
    for path in NCOOD.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        if path.name != "checkpoint.py":
            assert "torch.load(" not in text, f"{path}: load checkpoints with ncood.checkpoint.load"
