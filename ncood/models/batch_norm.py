"""BatchNorm statistics of a multi-GPU nn.DataParallel run, on one device (TrialConfig.bn_groups, off by default).

The seed paper trained on "four NVIDIA V100 GPUs in PyTorch 1.10.1" (Sec. 3.1) with DDU's models; DDU's train.py wraps
the network in `nn.DataParallel(net, device_ids=range(torch.cuda.device_count()))`. Whether each run used all four
GPUs that way is not stated (docs/method.md#bn-groups), so this is an option for measuring the difference. Under
DataParallel each batch is scattered into `torch.chunk(batch, n_gpus)` pieces and a replica of the network runs on
each, so every BatchNorm layer normalizes each piece with that piece's own mean and variance (batch 1024 on four GPUs:
statistics over 256 images), and only the replica on the first device writes its running estimates back (the others
are discarded with their replicas; PyTorch's DataParallel docs). The loss and the gradients are those of the whole
batch.

`split_batch_norm(model, groups)` gives a single-device network exactly that behaviour: every nn.BatchNorm2d becomes a
`SplitBatchNorm2d` that, in training mode, normalizes each of `torch.chunk(x, groups)` with its own statistics and
updates the running estimates from the first chunk only. Nothing else in these networks mixes samples (spectral
norm's power iteration does not read the batch, and each DataParallel replica starts it from the same vectors, so the
first replica's update is the one update). Eval mode is BatchNorm2d's, and the state_dict keys are BatchNorm2d's:
checkpoints and served models load into plain networks. Written here because neither torch nor timm has it (timm's
and torch's SyncBatchNorm do the opposite: one set of statistics over all devices).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SplitBatchNorm2d", "split_batch_norm"]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode statistics are per chunk of the batch (module docstring)."""

    def __init__(self, num_features: int, groups: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.groups == 1:
            return super().forward(x)
        chunks = x.chunk(self.groups)  # (B_i, C, H, W): DataParallel's scatter, fewer pieces for a small batch
        first = super().forward(chunks[0])  # the first device's replica: updates the running estimates
        rest = [F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps) for c in chunks[1:]]
        return torch.cat([first, *rest]) if rest else first

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"


def split_batch_norm(model: nn.Module, groups: int) -> nn.Module:
    """`model` with every nn.BatchNorm2d replaced by a SplitBatchNorm2d of `groups` sharing its parameters and
    buffers (the same tensors: an optimizer built before or after sees the same parameters); groups=1: unchanged."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if groups == 1:
        return model
    if not any(type(m) is nn.BatchNorm2d for m in model.modules()):
        raise ValueError(f"split_batch_norm: the model has no nn.BatchNorm2d to split into {groups} groups")
    _replace(model, groups)
    return model


def _replace(model: nn.Module, groups: int) -> None:
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = SplitBatchNorm2d(child.num_features, groups, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine, track_running_stats=child.track_running_stats,
                                   device=None if child.weight is None else child.weight.device)
            new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            _replace(child, groups)
