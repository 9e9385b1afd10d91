"""One typed, frozen configuration per trial, built from a named preset plus validated overrides.

The papers' training recipe (docs/method.md#training): SGD lr 0.1, batch 1024, cross-entropy, LR x0.1 at two
milestones that depend on the epoch budget; momentum 0.9 and weight decay 5e-4 are DDU's code defaults (utils/args.py),
which the papers do not state. The TMLR 2024 paper ("Exploring Simple, High Quality Out-of-Distribution Detection with
L2 Normalization", appendix A.1) adds AdamW + cosine annealing (ConvNeXt; CCT: cosine there, AdamW in the
Compact-Transformers recipe A.1 refers to) and the LogitNorm loss (Wei et al. 2022); lr and weight decay default to the chosen optimizer's
values (OPTIMIZER_DEFAULTS). A config is stored in every checkpoint, every `summary.json` and every MLflow run (as
params, with every default resolved), so any run can be repeated from it.

The defaults are the papers' model: spectral normalization (coefficient 3) and leaky ReLU + average-pool shortcuts
("leaky/GAP") are ON. Seed paper ("Inducing Early Neural Collapse ...", Sec. 3.1): "All models (except those
explicitly noted in the ablation study) use spectral normalization, leaky ReLUs and Global Average Pooling (GAP)";
TMLR 2024 ("Exploring Simple, High Quality OoD Detection with L2 Normalization", App. A.1): "All ResNet models use
spectral normalization, global average pooling, and Leaky ReLUs". The coefficient 3 is DDU's default (code
`utils/args.py`: `sn_coeff = 3.0`); the papers build on DDU's models. `--no-spectral-norm --no-leaky-gap` trains
the plain network (seed paper Table 2 ablates both). VGG16 defaults to the plain network: A.1 names only the ResNets.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

# The papers' LR schedules (seed paper section 3; DDU): epochs -> the two epochs where LR is multiplied by 0.1.
PAPER_MILESTONES = {60: (40, 50), 100: (75, 90), 350: (150, 250)}
LOSSES = ("ce", "nc", "logitnorm")  # cross-entropy; the seed paper's NC intervention loss; LogitNorm (ncood.train)
PRECISIONS = ("fp32", "bf16")  # training: IEEE fp32 (default; the papers state none) | bf16 autocast (ncood.train)
SCHEDULES = ("step", "cosine")  # MultiStepLR at `milestones` (the papers) | CosineAnnealingLR over the epochs
# (lr, weight decay) when not given. SGD: lr 0.1 is the papers' (seed paper Sec. 3.1, TMLR A.1); weight decay 5e-4
# is DDU's code default (utils/args.py), which the papers do not state. AdamW: lr 1e-3 is torch's
# default and ConvNeXt's 4e-3 at batch 4096 (Liu et al. 2022, "A ConvNet for the 2020s", Sec. 2) scaled linearly to
# batch 1024; weight decay 0.05 is ConvNeXt's. TMLR A.1 gives no ConvNeXt values; CCT's recipe is in the tmlr presets.
OPTIMIZER_DEFAULTS = {"sgd": (0.1, 5e-4), "adamw": (1e-3, 0.05)}
LOGITNORM_TEMPERATURE = 0.04  # Wei et al. 2022's CIFAR-10 value (OpenOOD configs/pipelines/train/train_logitnorm.yml)


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
    # model (docs/method.md#models)
    arch: str = _f("resnet18", "architecture from the model registry")
    width: int = _f(64, "size: 64 builds the papers' networks (ResNet/VGG base channels; WRN-28-10 and ConvNeXt-Tiny "
                        "channels scale by width/64; CCT embedding = 4 * width); 8 is a CPU-sized variant")
    l2: bool = _f(False, "L2-normalize the features before the classifier")
    spectral_norm: bool | None = _f(None, "DDU soft spectral normalization on every conv; default: on for the "
                                          "ResNets (the papers' models) and WideResNet, off for VGG16 and the "
                                          "others")
    sn_coeff: float = _f(3.0, "spectral-norm coefficient (DDU: 3)")
    leaky_gap: bool | None = _f(None, "DDU 'mod': leaky ReLU + average-pool/zero-pad shortcuts; default: on for the "
                                      "ResNets (the papers' models) and WideResNet, off for VGG16 and the others")
    etf_projector: bool = _f(False, "ICML 2025 NC control: fixed simplex-ETF projector whose L2-normalized output "
                                    "feeds the classifier")
    # optimisation (docs/method.md#training)
    epochs: int = _f(60, "training epochs; LR x0.1 at 40/50 (60), 75/90 (100), 150/250 (350), else 2/3 and 5/6")
    batch_size: int | None = _f(None, "batch size; default: the dataset's (1024 for CIFAR as in the papers)")
    bn_groups: int = _f(1, "BatchNorm statistics per chunk of each training batch, in this many chunks, as "
                           "nn.DataParallel on that many GPUs computes them (ncood.models.batch_norm; 4 = the seed "
                           "paper's four V100s IF each run used all four: not stated); 1 = over the whole batch")
    precision: str = _f("fp32", "training precision: fp32 (IEEE, no TF32; V100s have no bf16 and DDU's code no "
                                "autocast) | bf16 (autocast: faster on recent GPUs, not the papers')")
    lr: float | None = _f(None, "learning rate; default: the optimizer's (SGD 0.1 as in the papers, AdamW 1e-3)")
    momentum: float = _f(0.9, "SGD momentum (AdamW uses betas)")
    weight_decay: float | None = _f(None, "weight decay; default: the optimizer's (SGD 5e-4, AdamW 0.05)")
    seed: int = _f(0, "seed for initialisation, batch order and augmentation")
    lr_steps: tuple[int, ...] | None = _f(None, "comma-separated epochs where LR is multiplied by 0.1; "
                                               "default: the papers' milestones for the epoch budget")
    loss: str = _f("ce", "training loss: ce (cross-entropy) | nc (seed paper Sec. 4.2 NC intervention loss) | "
                         "logitnorm (Wei et al. 2022: cross-entropy of logits / (T * ||logits||))")
    entropy_reg: float = _f(0.0, "weight of the nearest-neighbour entropy regularizer on normalized features "
                                 "(ICML 2025 NC control code, pretrain_resnet_nc.sh: 0.05; 0 = off)")
    # TMLR 2024 study (appendix A.1): optimizer, LR schedule, LogitNorm temperature
    optimizer: str = _f("sgd", "sgd | adamw (TMLR A.1: ConvNeXt is trained with AdamW; so is CCT in the "
                               "Compact-Transformers recipe A.1 refers to)")
    schedule: str = _f("step", "step: LR x0.1 at the milestones (the papers) | cosine: CosineAnnealingLR to 0 over "
                               "the epochs, stepped once per epoch (TMLR A.1: ConvNeXt, CCT)")
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas, comma-separated (torch's default 0.9,0.999); "
                                                  "not used by SGD")
    logitnorm_temperature: float = _f(LOGITNORM_TEMPERATURE, "LogitNorm temperature T (loss=logitnorm only; Wei "
                                                            "et al. 2022 use 0.04 on CIFAR-10)")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing (0 = off, the seed/TMLR papers; the ICML 2025 "
                                     "NC-control code uses 0.1)")
    # measurement and runtime
    eval_every: int = _f(10, "evaluate NC + OoD every k epochs and at the last one (0 = last only)")
    nc_every: int = _f(0, "between those evaluations, NC metrics and test accuracy alone (no OoD scores: a train- and "
                          "a test-set forward) every k epochs (0 = off)")
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
            from ncood.data import list_datasets

            raise ConfigError(f"dataset: '{self.dataset}' is an OoD-only set and cannot be trained on; ID sets: "
                              f"{', '.join(list_datasets(id_only=True))}")
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
        self._resolve_optimizer()
        self._check_model_toggles()
        checks = [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.train_subset is None or self.train_subset >= info.num_classes, "train_subset",
             f"must be at least the number of classes ({info.num_classes}), or unset for the whole train set"),
            (self.width >= 1, "width", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.bn_groups >= 1, "bn_groups", "must be >= 1 (1 = BatchNorm over the whole batch)"),
            (self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}"),
            (self.sn_coeff > 0, "sn_coeff", "spectral-norm coefficient must be > 0 (DDU uses 3)"),
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.loss in LOSSES, "loss", f"must be one of {LOSSES}"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}"),
            (self.logitnorm_temperature > 0, "logitnorm_temperature", "must be > 0 (Wei et al. 2022: 0.04)"),
            (all(0 <= b < 1 for b in self.betas), "betas", "AdamW betas must be in [0, 1), e.g. 0.9,0.999"),
            (self.entropy_reg >= 0, "entropy_reg", "must be >= 0 (0 = off; the ICML 2025 code uses 0.05)"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1) (0 = off; the ICML 2025 code: 0.1)"),
            (self.lr_steps is None or all(e >= 1 for e in self.lr_steps), "lr_steps", "epochs must be >= 1"),
            (self.eval_every >= 0, "eval_every", "must be >= 0 (0 = evaluate only after the last epoch)"),
            (self.nc_every >= 0, "nc_every", "must be >= 0 (0 = NC metrics only with the full evaluations)"),
            (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
             "must be auto, cpu, cuda or cuda:N"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {why}")

    def _resolve_optimizer(self) -> None:
        """optimizer checked first; lr / weight_decay filled from its defaults; betas parsed from '0.9,0.999'."""
        if self.optimizer not in OPTIMIZER_DEFAULTS:
            raise ConfigError(f"optimizer={self.optimizer!r}: must be one of {tuple(OPTIMIZER_DEFAULTS)}")
        lr, weight_decay = OPTIMIZER_DEFAULTS[self.optimizer]
        object.__setattr__(self, "lr", lr if self.lr is None else self.lr)
        object.__setattr__(self, "weight_decay", weight_decay if self.weight_decay is None else self.weight_decay)
        betas = self.betas.split(",") if isinstance(self.betas, str) else self.betas
        try:
            betas = tuple(float(b) for b in betas)
        except (TypeError, ValueError):
            raise ConfigError(f"betas={self.betas!r}: expected two comma-separated numbers, e.g. 0.9,0.999") from None
        if len(betas) != 2:
            raise ConfigError(f"betas={self.betas!r}: expected two numbers (beta1, beta2), e.g. 0.9,0.999")
        object.__setattr__(self, "betas", betas)

    def _check_model_toggles(self) -> None:
        """DDU's spectral norm and leaky/GAP exist only for the conv/BN networks. Unset (None), each takes the
        architecture's default (ncood.models.toggle_default): on for the ResNets (the papers' models) and
        WideResNet (DDU's), off for VGG16 (TMLR App. A.1 names only the ResNets) and where the architecture lacks
        it (ConvNeXt, CCT); set on for an architecture without it, it is refused (never silently train a different
        network than the config says)."""
        from ncood.models import models_supporting, toggle_default

        for name in ("spectral_norm", "leaky_gap"):
            able = models_supporting(name)
            if getattr(self, name) is None:
                object.__setattr__(self, name, toggle_default(self.arch, name))
            if getattr(self, name) and self.arch not in able:
                raise ConfigError(f"{name}: architecture '{self.arch}' does not support DDU's {name} (it has no "
                                  f"conv/BN/ReLU stack to apply it to); turn it off (--no-{name.replace('_', '-')}) "
                                  f"or use one of {able}")
        # The networks with DDU's toggles are exactly the conv/BatchNorm ones; ConvNeXt and CCT use LayerNorm.
        if self.bn_groups > 1 and self.arch not in models_supporting("leaky_gap"):
            raise ConfigError(f"bn_groups={self.bn_groups}: architecture '{self.arch}' has no BatchNorm (it uses "
                              "LayerNorm), so there are no batch statistics to split; use --bn-groups 1")

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
        parts += [f"ls{self.label_smoothing:g}"] if self.label_smoothing else []
        parts += [f"{self.loss}loss"] if self.loss != "ce" else []
        # TMLR 2024 axes: only when not the default, so every earlier condition name stays the same
        parts += [f"t{self.logitnorm_temperature:g}"] if (
            self.loss == "logitnorm" and self.logitnorm_temperature != LOGITNORM_TEMPERATURE) else []
        parts += [self.optimizer] if self.optimizer != "sgd" else []
        parts += ["cos"] if self.schedule != "step" else []
        parts += [f"e{self.epochs}"]
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ood_sets"] = list(self.ood_sets)
        d["lr_steps"] = None if self.lr_steps is None else list(self.lr_steps)
        d["betas"] = list(self.betas)
        return d

    def replace(self, **overrides: Any) -> "TrialConfig":
        """A copy with `overrides`. Fields resolved from defaults (batch_size and ood_sets from the dataset, lr and
        weight_decay from the optimizer, spectral_norm and leaky_gap from the architecture) keep their values: pass
        them too when changing dataset, optimizer or architecture."""
        _check_keys(overrides)
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        _check_keys(d)
        d = dict(d)
        for name in ("ood_sets", "lr_steps", "betas"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d)


@dataclass(frozen=True)
class FieldKind:
    """A TrialConfig field's type, read from its annotation: `base` is bool | int | float | str (for a tuple field,
    the element type); `optional` for 'X | None'; `many` for a tuple (written 'a,b' in flags and MLflow params)."""

    base: type
    optional: bool
    many: bool


def _field_kinds() -> dict[str, FieldKind]:
    kinds = {}
    for name, hint in typing.get_type_hints(TrialConfig).items():
        optional = isinstance(hint, types.UnionType)  # 'X | None'
        inner = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        many = typing.get_origin(inner) is tuple
        base = typing.get_args(inner)[0] if many else inner
        kinds[name] = FieldKind(base, optional, many)
    return kinds


FIELD_KINDS: dict[str, FieldKind] = _field_kinds()


def parse_field(name: str, text: str) -> Any:
    """A TrialConfig field's value from its text form (an MLflow param, written by TrialTracker from to_dict):
    'None' -> None, 'True'/'False' -> bool, int/float fields -> numbers, tuple fields 'a,b' -> a list of elements.
    Raises ValueError (int('x')) on text that is not of the field's type; unknown names stay text."""
    kind = FIELD_KINDS.get(name)
    if text == "None" or kind is None:
        return None if text == "None" else text
    convert = (lambda v: v == "True") if kind.base is bool else kind.base
    return [convert(v.strip()) for v in text.split(",") if v.strip()] if kind.many else convert(text)


def config_from_params(params: dict[str, str]) -> TrialConfig:
    """The TrialConfig a run was logged from (its MLflow params; other params, e.g. score/<name>/<field>, ignored)."""
    return TrialConfig.from_dict({k: parse_field(k, v) for k, v in params.items() if k in FIELD_KINDS})


_ON_OFF = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


def parse_on_off(text: str) -> bool:
    """A boolean flag's value: on|off (also true/false, yes/no, 1/0)."""
    import argparse

    if text.lower() not in _ON_OFF:
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return _ON_OFF[text.lower()]


def registered_names(name: str) -> tuple[str, ...]:
    """The registered names a field takes (arch: models, dataset: ID datasets, ood_sets: datasets), for --help;
    () for other fields. Read without importing torch, so --help stays fast."""
    from ncood import registry_names

    found = {"arch": registry_names.model_names, "dataset": lambda: registry_names.dataset_names(id_only=True),
             "ood_sets": registry_names.dataset_names}
    return found[name]() if name in found else ()


def add_config_flags(parser: Any, skip: tuple[str, ...] = ()) -> None:
    """One command-line flag per TrialConfig field (an argparse parser or group; default None = the preset's), the
    same in `ncood train` and the grid scripts. Booleans have one spelling everywhere: `--l2 on|off` (a bare `--l2`
    means on); typed numbers; tuple fields as one 'a,b' string (TrialConfig splits it); --arch, --dataset and
    --ood-sets list the registered names."""
    for f in fields(TrialConfig):
        if f.name in skip:
            continue
        flag, help_, kind = "--" + f.name.replace("_", "-"), f.metadata.get("help", ""), FIELD_KINDS[f.name]
        if kind.base is bool:
            parser.add_argument(flag, dest=f.name, type=parse_on_off, nargs="?", const=True, default=None,
                                metavar="on|off", help=help_)
        else:
            names = registered_names(f.name)
            parser.add_argument(flag, dest=f.name, type=str if kind.many else kind.base, default=None,
                                metavar=f.name.upper(),
                                help=help_ + (f" (registered: {', '.join(names)})" if names else ""))


# The fields TrialConfig.condition is made of: every axis of an experiment except the seed. The ablation grid's
# axes (ncood.tune.grid.AXES) are a subset; aggregation groups runs by all of them.
# The dataset is not one: a sweep trains one dataset (its experiment says which; aggregation reads the `dataset` param).
CONDITION_FIELDS = ("arch", "width", "l2", "spectral_norm", "leaky_gap", "epochs", "etf_projector", "entropy_reg",
                    "loss", "label_smoothing", "logitnorm_temperature", "optimizer", "schedule")

# Named presets: partial configs on top of the defaults (the papers' model: SN coefficient 3 + leaky/GAP, SGD 0.1 /
# 0.9 / 5e-4). "cifar10" is the seed paper's ResNet18 setting (Sec. 3.1: batch 1024, 60 epochs with LR x0.1 at 40
# and 50; Table 1 "L2 60" / "No L2 60"); "digits" the same recipe width-reduced on the embedded 8x8 digits (CPU-sized:
# width 8, 15 epochs with LR x0.1 at 10 and 12, batch 128 for ~1.3k training images).
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(dataset="digits", width=8, epochs=15, batch_size=128, eval_every=5),
    "cifar10": dict(dataset="cifar10", width=64, epochs=60, batch_size=1024, eval_every=10),
    # Fashion-MNIST with the seed paper's recipe (Sec. 3.1: spectral norm, leaky ReLU and GAP on; ResNet18 width
    # 64, 60 epochs, LR x0.1 at 40/50, batch 1024): the papers' CIFAR-10 setting on offline data.
    "fmnist": dict(dataset="fashion_mnist", width=64, epochs=60, batch_size=1024, eval_every=10, spectral_norm=True,
                   leaky_gap=True),
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
