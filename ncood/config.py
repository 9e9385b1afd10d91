"""One typed, frozen configuration per trial, built from a named preset plus validated overrides.

The papers' training recipe (REFERENCE.md section 3): SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 1024,
cross-entropy, LR x0.1 at two milestones that depend on the epoch budget. A config is stored in every checkpoint,
every `summary.json` and every MLflow run (as params), so any run can be repeated from it.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

# The papers' LR schedules (seed paper section 3; DDU): epochs -> the two epochs where LR is multiplied by 0.1.
PAPER_MILESTONES = {60: (40, 50), 100: (75, 90), 350: (150, 250)}
LOSSES = ("ce", "nc")  # cross-entropy; the seed paper's NC intervention loss (ncood.collapse.nc_loss)


class ConfigError(ValueError):
    """A config value or override that cannot be used; the message names the field and the fix."""


def lr_milestones(epochs: int) -> tuple[int, int]:
    """LR drop epochs: the papers' (60 -> 40/50, 100 -> 75/90, 350 -> 150/250), otherwise at 2/3 and 5/6."""
    if epochs in PAPER_MILESTONES:
        return PAPER_MILESTONES[epochs]
    return (max(1, round(epochs * 2 / 3)), max(1, round(epochs * 5 / 6)))


def default_data_root() -> str:
    """$NCOOD_DATA_ROOT, else ~/.cache/ncood/data (absolute: Ray trials run in temporary working dirs)."""
    return str(Path(os.environ.get("NCOOD_DATA_ROOT", "~/.cache/ncood/data")).expanduser().resolve())


def _f(default: Any, help: str, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its --help text (the CLI builds its flags from these)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one trial. `None` fields are filled from the dataset's defaults at construction."""

    # data
    dataset: str = _f("digits", "in-distribution training set (see `ncood datasets`)")
    ood_sets: tuple[str, ...] | None = _f(None, "comma-separated OoD sets; default: the dataset's own list")
    data_root: str = _f(None, "where datasets live (absolute); default $NCOOD_DATA_ROOT or ~/.cache/ncood/data",
                        factory=default_data_root)
    download: bool = _f(False, "download missing torchvision datasets (needs a network)")
    train_subset: int | None = _f(None, "train on a stratified random subset of N images of the train part "
                                        "(fixed seed; validation and test sets stay whole); default: all")
    # model (REFERENCE.md section 2)
    arch: str = _f("resnet18", "architecture from the model registry")
    width: int = _f(64, "base channels: 64 in the papers, 8 is a CPU-sized variant of the same network")
    l2: bool = _f(False, "L2-normalize the features before the classifier")
    spectral_norm: bool = _f(False, "DDU soft spectral normalization on every conv")
    sn_coeff: float = _f(3.0, "spectral-norm coefficient (DDU: 3)")
    leaky_gap: bool = _f(False, "DDU 'mod': leaky ReLU + average-pool/zero-pad shortcuts")
    etf_projector: bool = _f(False, "ICML 2025 NC control: fixed simplex-ETF projector whose L2-normalized output "
                                    "feeds the classifier")
    # optimisation (REFERENCE.md section 3)
    epochs: int = _f(60, "training epochs; LR x0.1 at 40/50 (60), 75/90 (100), 150/250 (350), else 2/3 and 5/6")
    batch_size: int | None = _f(None, "batch size; default: the dataset's (1024 for CIFAR as in the papers)")
    lr: float = _f(0.1, "SGD learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "SGD weight decay")
    seed: int = _f(0, "seed for initialisation, batch order and augmentation")
    lr_steps: tuple[int, ...] | None = _f(None, "comma-separated epochs where LR is multiplied by 0.1; "
                                               "default: the papers' milestones for the epoch budget")
    loss: str = _f("ce", "training loss: ce (cross-entropy) | nc (seed paper Sec. 4.2 NC intervention loss)")
    entropy_reg: float = _f(0.0, "weight of the nearest-neighbour entropy regularizer on normalized features "
                                 "(ICML 2025 NC control: 0.05; 0 = off)")
    # measurement and runtime
    eval_every: int = _f(10, "evaluate NC + OoD every k epochs and at the last one (0 = last only)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    compile: bool = _f(False, "torch.compile the model (CUDA only)")

    def __post_init__(self) -> None:
        from ncood.data import get_info  # data knows nothing of config; config reads the dataset registry
        from ncood.models import list_models

        try:
            info = get_info(self.dataset)
        except ValueError as e:
            raise ConfigError(f"dataset: {e}") from None
        if not info.can_be_id:
            raise ConfigError(f"dataset: '{self.dataset}' is an OoD-only set and cannot be trained on")
        if self.ood_sets is None:
            object.__setattr__(self, "ood_sets", tuple(info.default_ood))
        elif isinstance(self.ood_sets, (list, str)):
            sets = self.ood_sets.split(",") if isinstance(self.ood_sets, str) else self.ood_sets
            object.__setattr__(self, "ood_sets", tuple(s.strip() for s in sets if s.strip()))
        for name in self.ood_sets:
            try:
                get_info(name)
            except ValueError as e:
                raise ConfigError(f"ood_sets: {e}") from None
        if isinstance(self.lr_steps, (list, str, int)):
            steps = self.lr_steps.split(",") if isinstance(self.lr_steps, str) else (
                [self.lr_steps] if isinstance(self.lr_steps, int) else self.lr_steps)
            try:
                object.__setattr__(self, "lr_steps", tuple(int(e) for e in steps if str(e).strip()))
            except ValueError:
                raise ConfigError(f"lr_steps={self.lr_steps!r}: expected comma-separated epochs, e.g. 10") from None
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", int(info.default_batch_size or 128))
        object.__setattr__(self, "data_root", str(Path(self.data_root).expanduser().resolve()))
        if self.arch not in list_models():
            raise ConfigError(f"arch: unknown architecture '{self.arch}'; choose one of {list_models()}")
        checks = [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.train_subset is None or self.train_subset >= info.num_classes, "train_subset",
             f"must be at least the number of classes ({info.num_classes}), or unset for the whole train set"),
            (self.width >= 1, "width", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.sn_coeff > 0, "sn_coeff", "spectral-norm coefficient must be > 0 (DDU uses 3)"),
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.loss in LOSSES, "loss", f"must be one of {LOSSES}"),
            (self.entropy_reg >= 0, "entropy_reg", "must be >= 0 (0 = off; the ICML 2025 paper uses 0.05)"),
            (self.lr_steps is None or all(e >= 1 for e in self.lr_steps), "lr_steps", "epochs must be >= 1"),
            (self.eval_every >= 0, "eval_every", "must be >= 0 (0 = evaluate only after the last epoch)"),
            (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
             "must be auto, cpu, cuda or cuda:N"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {why}")

    @property
    def milestones(self) -> tuple[int, ...]:
        return lr_milestones(self.epochs) if self.lr_steps is None else self.lr_steps

    @property
    def condition(self) -> str:  # made of CONDITION_FIELDS (below); tests/test_aggregate.py keeps the two in step
        """The experimental condition (every grid axis except the seed), e.g. 'resnet18-w8-l2-sn-lg-e15'."""
        parts = [self.arch, f"w{self.width}", "l2" if self.l2 else "nol2"]
        parts += ["sn"] if self.spectral_norm else []
        parts += ["lg"] if self.leaky_gap else []
        # NC control / intervention: only when set, so the names of the papers' conditions never change
        parts += ["etf"] if self.etf_projector else []
        parts += [f"ent{self.entropy_reg:g}"] if self.entropy_reg else []
        parts += [f"{self.loss}loss"] if self.loss != "ce" else []
        parts += [f"e{self.epochs}"]
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ood_sets"] = list(self.ood_sets)
        d["lr_steps"] = None if self.lr_steps is None else list(self.lr_steps)
        return d

    def replace(self, **overrides: Any) -> "TrialConfig":
        _check_keys(overrides)
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        _check_keys(d)
        d = dict(d)
        for name in ("ood_sets", "lr_steps"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d)


# The fields TrialConfig.condition is made of: every axis of an experiment except the seed. The ablation grid's
# axes (ncood.tune.grid.AXES) are a subset; aggregation groups runs by all of them.
CONDITION_FIELDS = ("arch", "width", "l2", "spectral_norm", "leaky_gap", "epochs", "etf_projector", "entropy_reg",
                    "loss")

# Named presets: partial configs. "digits" is the embedded CPU-sized default; "cifar10" the papers' setting.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(dataset="digits", width=8, epochs=15, eval_every=5),
    "cifar10": dict(dataset="cifar10", width=64, epochs=60, eval_every=10),
    # Fashion-MNIST with the seed paper's recipe (Sec. 3.1: spectral norm, leaky ReLU and GAP on; ResNet18 width
    # 64, 60 epochs, LR x0.1 at 40/50, batch 1024 from the dataset): the papers' CIFAR-10 setting on offline data.
    "fmnist": dict(dataset="fashion_mnist", width=64, epochs=60, eval_every=10, spectral_norm=True, leaky_gap=True),
}


def _check_keys(overrides: dict[str, Any]) -> None:
    known = [f.name for f in fields(TrialConfig)]
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known fields: {', '.join(known)}"
            raise ConfigError(f"unknown config field '{key}'{hint}")


def make_config(preset: str = "digits", **overrides: Any) -> TrialConfig:
    """TrialConfig from a named preset plus overrides; unknown presets or fields raise ConfigError."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}")
    _check_keys(overrides)
    return TrialConfig(**{**PRESETS[preset], **overrides})
