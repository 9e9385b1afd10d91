"""Assemble one trial from its config: data -> model -> trainer (+ per-epoch evaluation) -> results.

This is the only place that turns a TrialConfig into built objects; the CLI (`ncood train`) and the Ray Tune
trainable both call `build_trial` / `run_trial`, adding their own epoch callbacks (progress, MLflow, Tune).
"""
from __future__ import annotations

import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ncood import keys
from ncood.config import TrialConfig
from ncood.data import DatasetInfo, IDData, load_id, load_ood
from ncood.evaluate import evaluate
from ncood.models import create_model, split_batch_norm
from ncood.train import EpochCallback, Trainer, every_epochs, resolve_device

# Data splits and OoD sets are the same for every seed of a grid: only the model seed varies between trials.
DATA_SEED = 0


class DegenerateGaussianWarning(UserWarning):
    """A GMM fit needed jitter > 0: some class covariance is singular and the jitter shapes the GMM scores."""


def warn_degenerate_fit(cfg: TrialConfig, epoch: int, results: dict[str, float]) -> bool:
    """warnings.warn naming the trial when the epoch's GMM fit needed jitter (its results hold the facts); True if so."""
    jitter = results.get(keys.GMM_JITTER, 0.0)
    if not jitter:
        return False
    warnings.warn(
        f"{cfg.condition} seed {cfg.seed}, epoch {epoch}: the GMM class covariances are singular, the fit needed "
        f"jitter {jitter:g} (DDU's ladder) and {results.get(keys.GMM_DEGENERATE_DIMS, 0):g} feature dimensions have "
        f"zero variance in the worst class; its GMM scores depend on that jitter (logged as {keys.GMM_JITTER} and "
        f"{keys.GMM_DEGENERATE_DIMS}). Causes: zero-variance dimensions (plain-ReLU channels that are 0 for a whole "
        f"class; spectral norm + leaky/GAP, the papers' model, avoid them) or classes with fewer training samples "
        f"than feature dimensions.",
        DegenerateGaussianWarning, stacklevel=2)
    return True


@dataclass
class Evaluation:
    """Epoch callback: the full measurement (NC + GMM + every score on every OoD set) every `eval_every` epochs, and
    NC metrics with the accuracies alone every `nc_every` epochs in between (the same evaluate() without OoD sets
    or scores: one train-set and one test-set forward, about a third of a full evaluation on digits).

    Adds the flat results dict (ncood.keys schema) to the epoch's metrics and keeps the latest fitted scores
    (the class Gaussians go into the checkpoint).
    """

    ood_sets: dict[str, torch.Tensor]
    cfg: TrialConfig
    last_fit: Any = None
    last_results: dict[str, float] = field(default_factory=dict)
    warned: bool = False  # a degenerate fit warns at its first evaluation and at the last epoch, not every epoch

    def __post_init__(self) -> None:
        self.due = every_epochs(self.cfg.eval_every, self.cfg.epochs)
        # nc_every 0 leaves only the last epoch, which always gets the full evaluation: no NC-only pass then
        self.nc_due = every_epochs(self.cfg.nc_every, self.cfg.epochs)

    def __call__(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        batch_size = max(self.cfg.batch_size, 1024)  # no grads: big batches are cheaper
        if not self.due(epoch):
            if self.nc_due(epoch):
                results, _ = evaluate(trainer.model, trainer.data, {}, l2=self.cfg.l2, batch_size=batch_size,
                                      scores=())
                results.pop(keys.EVAL_TIME)  # time/eval_s is the full evaluation's cost
                metrics.update(results)
            return
        results, fit = evaluate(trainer.model, trainer.data, self.ood_sets, l2=self.cfg.l2, batch_size=batch_size)
        metrics.update(results)
        self.last_fit, self.last_results = fit, results
        if not self.warned or epoch == self.cfg.epochs:
            self.warned = warn_degenerate_fit(self.cfg, epoch, results) or self.warned


@dataclass
class Trial:
    cfg: TrialConfig
    data: IDData
    ood_sets: dict[str, torch.Tensor]
    trainer: Trainer
    evaluation: Evaluation


def model_kwargs(cfg: TrialConfig, info: DatasetInfo) -> dict[str, Any]:
    """create_model keyword arguments of a trial: `create_model(cfg.arch, **model_kwargs(cfg, info))`.
    One definition for training and for serving (which rebuilds the network from these)."""
    c, h, _ = info.image_shape
    return dict(num_classes=info.num_classes, in_channels=c, input_size=h, width=cfg.width, l2=cfg.l2,
                spectral_norm=cfg.spectral_norm, sn_coeff=cfg.sn_coeff, leaky_gap=cfg.leaky_gap,
                **({"etf_projector": True} if cfg.etf_projector else {}))  # absent when off: old packages load


_DATA_CACHE: dict[tuple, tuple[IDData, dict[str, torch.Tensor]]] = {}  # at most one entry (load_trial_data)


def load_trial_data(cfg: TrialConfig, device: torch.device, reuse: bool = False
                    ) -> tuple[IDData, dict[str, torch.Tensor]]:
    """The trial's ID data and OoD sets on `device` (normalized, split with DATA_SEED).

    reuse: keep them for the next trial of this process with the same data settings. A reused Ray worker runs trial
    after trial of one grid, whose seeds differ but whose data does not; nothing mutates the loaded tensors (the
    trainer gathers its batches from them). One entry only: a trial with other data settings drops it before
    loading, so a worker holds one data set at a time and its memory stays flat (ncood.tune.worker_memory).
    """
    key = (cfg.dataset, str(Path(cfg.data_root).expanduser().absolute()), str(device), cfg.download,
           cfg.train_subset, tuple(cfg.ood_sets), DATA_SEED)
    if reuse and key in _DATA_CACHE:
        return _DATA_CACHE[key]
    _DATA_CACHE.clear()  # before loading: the old set's memory is free for the new one
    data = load_id(cfg.dataset, cfg.data_root, device=device, download=cfg.download, split_seed=DATA_SEED,
                   train_subset=cfg.train_subset)
    ood_sets = {name: load_ood(name, cfg.data_root, like=data, device=device, download=cfg.download, seed=DATA_SEED)
                for name in cfg.ood_sets}
    if reuse:
        _DATA_CACHE[key] = (data, ood_sets)
    return data, ood_sets


def build_trial(cfg: TrialConfig, callbacks: Sequence[EpochCallback] = (), progress: bool = True, *,
                reuse_data: bool = False) -> Trial:
    """Load the data onto the device, build the model with the trial's seed, wire the evaluation callback.
    reuse_data: keep the loaded data for the next trial of this process (load_trial_data; the Ray trainable)."""
    device = resolve_device(cfg.device)
    data, ood_sets = load_trial_data(cfg, device, reuse_data)
    torch.manual_seed(cfg.seed)
    # BatchNorm per chunk of the batch, as the papers' multi-GPU DataParallel (cfg.bn_groups; same state_dict keys)
    model = split_batch_norm(create_model(cfg.arch, **model_kwargs(cfg, data.info)), cfg.bn_groups)
    evaluation = Evaluation(ood_sets, cfg)
    trainer = Trainer(model, data, cfg, callbacks=[evaluation, *callbacks], progress=progress)
    return Trial(cfg, data, ood_sets, trainer, evaluation)


def save_artifacts(trial: Trial, out_dir: Path) -> dict[str, str]:
    """Final weights + fitted class Gaussians + config, in `out_dir` (what MLflow and serving pick up)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": str(trial.trainer.save_checkpoint(out_dir / "checkpoint.pt"))}
    if trial.evaluation.last_fit is not None and trial.evaluation.last_fit.gaussians is not None:
        gpath = out_dir / "gaussians.pt"
        trial.evaluation.last_fit.gaussians.save(gpath)
        paths["gaussians"] = str(gpath)
    (out_dir / "config.json").write_text(json.dumps(trial.cfg.to_dict(), indent=2))
    paths["config"] = str(out_dir / "config.json")
    return paths


def environment() -> dict[str, str]:
    """Versions and device: every figure says where it was measured."""
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"torch": torch.__version__, "python": platform.python_version(), "device": dev}


def write_summary(trial: Trial, out_dir: Path, paths: dict[str, str], wall_s: float) -> Path:
    history = trial.trainer.history
    final = {k: v for k, v in history[-1].items()} if history else {}
    summary = {
        "config": trial.cfg.to_dict(),
        "condition": trial.cfg.condition,
        "epochs": [{"epoch": i + 1, **row} for i, row in enumerate(history)],
        "final": final,
        "test_accuracy": final.get(keys.ACC_TEST),
        "artifacts": paths,
        "wall_time_s": wall_s,
        "environment": environment(),
    }
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def run_trial(cfg: TrialConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
              callbacks: Sequence[EpochCallback] = (), checkpoint_every_epoch: bool = True) -> dict[str, Any]:
    """Train one trial to the end, checkpointing into `out_dir`; returns the summary dict.

    With `resume`, continues from `out_dir/checkpoint.pt` if it exists (same config required).
    """
    out_dir = Path(out_dir).resolve()
    t0 = time.perf_counter()
    cbs = list(callbacks)
    if checkpoint_every_epoch:  # a crash loses at most one epoch
        cbs.append(lambda tr, epoch, m: tr.save_checkpoint(out_dir / "checkpoint.pt"))
    trial = build_trial(cfg, cbs, progress=progress)
    ckpt = out_dir / "checkpoint.pt"
    if resume and ckpt.exists():
        trial.trainer.load_checkpoint(ckpt)
    trial.trainer.fit()
    if trial.evaluation.last_fit is None:  # resumed after the last epoch: measure once more
        trial.evaluation(trial.trainer, trial.trainer.epoch, trial.trainer.history[-1])
    paths = save_artifacts(trial, out_dir)
    write_summary(trial, out_dir, paths, time.perf_counter() - t0)
    return json.loads((out_dir / "summary.json").read_text())
