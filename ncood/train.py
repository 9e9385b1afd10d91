"""The training loop: optimizer + LR schedule, the training loss, per-epoch callbacks, exact checkpoint/resume.

Optimizer and schedule (`make_optimizer`, `make_scheduler`): SGD + MultiStepLR at the papers' milestones by default;
AdamW + CosineAnnealingLR for ConvNeXt (TMLR 2024 appendix A.1) and CCT (cosine per A.1, AdamW per the
Compact-Transformers recipe A.1 refers to). AdamW takes no weight decay on biases
and 1-d (norm) parameters, as the ConvNeXt and CCT recipes do (timm's `param_groups_weight_decay`).
The loss (`training_loss`) is cross-entropy by default; `cfg.loss="nc"` is the seed paper's NC intervention loss
(Sec. 4.2: the differentiable NC metrics, no cross-entropy) on the features the classifier sees; `cfg.loss=
"logitnorm"` is LogitNorm (Wei et al. 2022; `logitnorm_loss`), and `cfg.entropy_reg` adds the ICML 2025
nearest-neighbour entropy regularizer on the L2-normalized encoder features;
`cfg.label_smoothing` smooths the cross-entropy targets (the ICML 2025 code's 0.1).

Recipe from the papers (docs/method.md#training). The trainer receives built objects (model, data, config); it does
not construct them from strings. Systems choices follow airbench: the training set lives on the device, batches
are cropped/flipped there, and nothing synchronises with the host inside an epoch (loss, accuracy and the
non-finite-loss check are accumulated on the device and read once per epoch).

Resume is exact: a checkpoint holds the model, optimizer, scheduler, the loader's generator and the global RNG
states, so `2 epochs + stop + resume 2 epochs` gives the same weights as 4 epochs straight (tests/test_train.py).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from ncood import checkpoint, keys
from ncood.collapse import nc_loss
from ncood.config import ConfigError, TrialConfig
from ncood.data import DeviceLoader, IDData, normalized_zero
from ncood.evaluate import exact_fp32


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; the message names the epoch and step."""


class EpochCallback(Protocol):
    """Called after every epoch; may add entries to `metrics` (e.g. the evaluation dict) or save state."""

    def __call__(self, trainer: "Trainer", epoch: int, metrics: dict[str, float]) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        # A configuration the machine cannot run, not a crash: `ncood train` reports it in one line (rc 2).
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use --device cpu (or auto)")
    return torch.device(name)


def nn_entropy(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """-mean_i log ||u_i - u_nn(i)||, u = z / ||z|| (B, d), nn(i) the nearest other sample of the batch.

    The Kozachenko-Leonenko entropy estimate up to constants (Sablayrolles et al. 2019), as the entropy
    regularizer of Harun et al. (ICML 2025) that keeps encoder features spread out (mitigates NC).
    fp32 even under autocast; eps keeps the log finite for duplicate samples.
    """
    u = F.normalize(z.float(), dim=1)  # (B, d)
    dist = torch.cdist(u, u)  # (B, B)
    dist = dist + torch.diag(torch.full((u.shape[0],), float("inf"), device=u.device))  # exclude i itself
    return -torch.log(dist.min(dim=1).values + eps).mean()


def logitnorm_loss(logits: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """LogitNorm (Wei et al. 2022, "Mitigating Neural Network Overconfidence with Logit Normalization", eq. 6):
    cross-entropy of f / (T * (||f||_2 + 1e-7)), f = logits (B, C), in fp32; the 1e-7 is the authors' code's
    (github.com/hongxin001/logitnorm_ood, common/loss_function.py l.55-57).

    Written out rather than pytorch_ood's logit_norm_loss: that one first drops labels < 0 by boolean indexing,
    a host sync per step that the training loop avoids (ncood has no unknown-class labels to drop)."""
    f = logits.float()
    return F.cross_entropy(f / (temperature * (f.norm(dim=1, keepdim=True) + 1e-7)), y)


def training_loss(model: torch.nn.Module, logits: torch.Tensor, z: torch.Tensor, y: torch.Tensor,
                  cfg: TrialConfig) -> torch.Tensor:
    """The training objective of `cfg`: cross-entropy (loss="ce", with cfg.label_smoothing: the ICML 2025 code's
    `nn.CrossEntropyLoss(label_smoothing=0.1)`, NC-OOD `resnet/pretrain_resnet_nc.py`:193), the NC loss (loss="nc")
    on the classifier's input features or LogitNorm (loss="logitnorm"), plus entropy_reg * nn_entropy(z) when
    entropy_reg > 0
    (defaults: plain cross-entropy)."""
    if cfg.loss == "nc":
        loss = nc_loss(model.classifier_input(z), y, model.classifier.weight)
    elif cfg.loss == "logitnorm":
        loss = logitnorm_loss(logits, y, cfg.logitnorm_temperature)
    else:
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    if cfg.entropy_reg:
        loss = loss + cfg.entropy_reg * nn_entropy(z)
    return loss


def make_optimizer(model: torch.nn.Module, cfg: TrialConfig, fused: bool) -> torch.optim.Optimizer:
    """cfg.optimizer over model's parameters with cfg.lr / weight_decay (momentum for SGD, betas for AdamW).
    fused: one kernel for all parameters (CUDA); otherwise foreach batches the update (CPU)."""
    fast = {"fused": True} if fused else {"foreach": True}
    if cfg.optimizer == "adamw":
        from timm.optim import param_groups_weight_decay  # here: only the AdamW recipes need timm (~0.5 s import)

        groups = param_groups_weight_decay(model, cfg.weight_decay)  # no decay on biases and norm weights
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **fast)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           **fast)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrialConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch. step: LR x0.1 at cfg.milestones; cosine: lr * (1 + cos(pi * epoch / epochs)) / 2."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), gamma=0.1)


RESUME_FIELDS = ("batch_size", "bn_groups", "precision")  # must match a checkpoint to resume from it


@dataclass
class Trainer:
    """Trains `model` on `data.train` as `cfg` says. `fit()` runs the remaining epochs and returns the history."""

    model: torch.nn.Module
    data: IDData
    cfg: TrialConfig
    callbacks: Sequence[EpochCallback] = ()
    progress: bool = True
    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics row per epoch

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.device = self.data.train.x.device
        cuda = self.device.type == "cuda"
        self.model.to(self.device)
        if cuda:  # channels_last lets cuDNN pick NHWC kernels, which bf16 tensor cores prefer
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, cfg, fused=cuda)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        # All batch order and augmentation randomness comes from this generator, saved in checkpoints.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        info = self.data.info
        self.loader = DeviceLoader(
            self.data.train, cfg.batch_size, shuffle=True, augment=True, crop_pad=info.crop_pad, flip=info.flip,
            fill=normalized_zero(info).to(self.device), generator=self.generator,
        )
        self.forward = torch.compile(self.model) if (cfg.compile and cuda) else self.model

    # ---- the loop -------------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, float]]:
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.cfg.epochs, initial=self.epoch, desc=f"train {self.cfg.condition} seed {self.cfg.seed}",
                       unit="ep", dynamic_ncols=True)
        try:
            while self.epoch < self.cfg.epochs:
                epoch = self.epoch + 1
                metrics = self.train_epoch(epoch)
                self.epoch = epoch
                self.history.append(metrics)
                for cb in self.callbacks:
                    cb(self, epoch, metrics)
                if bar is not None:
                    shown = {"loss": metrics[keys.LOSS_TRAIN], "acc": metrics[keys.ACC_TRAIN]}
                    if keys.ACC_TEST in metrics:
                        shown["test"] = metrics[keys.ACC_TEST]
                    bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; returns loss/accuracy/lr/time for the epoch (one host sync)."""
        self.model.train()
        cuda = self.device.type == "cuda"
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        first_bad = torch.full((), -1, device=self.device, dtype=torch.int64)  # first step with non-finite loss
        bf16 = self.cfg.precision == "bf16"
        # fp32: IEEE, no TF32 in cuDNN or matmuls, as on the papers' V100s (which have none); bf16: autocast around the
        # forward and the loss (backward outside it, as torch recommends).
        with contextlib.nullcontext() if bf16 else exact_fp32(self.device):
            for step, (x, y) in enumerate(self.loader):
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits, z = self.forward(x)
                    loss = training_loss(self.model, logits, z, y, self.cfg)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                detached = loss.detach()
                bad = ~torch.isfinite(detached)
                first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
                loss_sum += detached.double() * y.numel()
                correct += (logits.detach().argmax(1) == y).sum()
                seen += y.numel()
        self.scheduler.step()
        if cuda:
            torch.cuda.synchronize()
        bad_step = int(first_bad)  # the one host sync of the epoch
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {epoch}, step {bad_step} (lr {lr:g}, batch {self.cfg.batch_size}, "
                f"condition {self.cfg.condition}, seed {self.cfg.seed}). The last good checkpoint is unchanged; "
                f"try a lower --lr, or check the input data for NaN/inf."
            )
        return {
            keys.LOSS_TRAIN: float(loss_sum) / seen,
            keys.ACC_TRAIN: float(correct) / seen,
            keys.LR: lr,
            keys.EPOCH_TIME: time.perf_counter() - t0,
        }

    # ---- checkpoint / resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = TrialConfig.from_dict(state["config"])
        if saved.condition != self.cfg.condition or saved.seed != self.cfg.seed:
            # Another trial's checkpoint (e.g. the same folder trained with other --epochs): refused, and kept.
            raise ConfigError(f"the checkpoint is for {saved.condition} seed {saved.seed}, not {self.cfg.condition} "
                              f"seed {self.cfg.seed}; train this trial in another folder (ncood train --out; that "
                              "checkpoint is left as it is)")
        # How the saved epochs were trained, beyond the condition name: resuming with other values would mix two
        # recipes in one run (checkpoints written before a field existed read as its default).
        changed = {f: (getattr(saved, f), getattr(self.cfg, f)) for f in RESUME_FIELDS
                   if getattr(saved, f) != getattr(self.cfg, f)}
        if changed:
            flags = " ".join(f"--{f.replace('_', '-')} {old}" for f, (old, _) in changed.items())
            raise ConfigError("the checkpoint was trained with " + ", ".join(
                f"{f}={old} (this run: {new})" for f, (old, new) in changed.items()) + f"; resume with {flags}, or "
                "train in another folder (that checkpoint is left as it is)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Atomic write (tmp + rename): a crash mid-save never leaves a truncated checkpoint. Holds only tensors,
        numbers, strings, lists and dicts (ncood.checkpoint): loadable with weights_only=True."""
        return checkpoint.save({**self.state_dict(), **(extra or {})}, path)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore from `path` (weights-only unpickling: a file carrying code is refused, naming the file)."""
        state = checkpoint.load(path, map_location=self.device)
        self.load_state_dict(state)
        return state


def every_epochs(k: int, last: int) -> Callable[[int], bool]:
    """Predicate for 'every k epochs and always at the last one' (k = 0: only the last)."""
    return lambda epoch: epoch == last or (k > 0 and epoch % k == 0)
