"""Building blocks shared by every ncood network: DDU's layer toggles and the feature/head split.

Implements
- soft spectral normalization of convolutions through the convolution *operator* (input-shape aware),
  as in DDU (Mukhoti et al. 2021, "Deep Deterministic Uncertainty: A Simple Baseline", code
  `net/spectral_normalization/spectral_norm_conv_inplace.py`), after Gouk et al. 2018 and the soft
  coefficient of Behrmann et al. 2019 (i-ResNet): W_eff = W / max(1, sigma / coeff);
- DDU's "mod" ("Leaky/GAP" in the seed paper, sec. 2.2): LeakyReLU(0.01) everywhere and downsampling
  shortcuts by average pooling + zero-padded channels instead of a strided 1x1 conv;
- the L2 feature normalization of the seed paper ("Inducing Early Neural Collapse in Deep Neural
  Networks for Improved OoD Detection", sec. 3.3, eq. 9): logits = fc(z / max(||z||_2, eps));
- the fixed simplex-ETF projector of Harun et al. (ICML 2025, "Controlling Neural Collapse Enhances OoD
  Detection and Transfer Learning"): logits = fc(normalize(P(z))), P = Linear d->4d, ReLU, Linear 4d->d
  with the untrained weights sqrt(c/(c-1)) (I - 11^T/c) of its code (`simplex_etf`).

Spatial sizes are propagated at construction (square maps, one int) because the operator norm of a
convolution depends on the shape of the map it acts on. This module knows nothing of `ncood.models`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.01  # DDU: F.leaky_relu default slope
L2_EPS = 1e-12  # seed paper eq. 9: the eps only guards the zero vector


@dataclass(frozen=True)
class LayerSpec:
    """Options shared by every layer of one network (DDU's toggles)."""

    leaky: bool = False  # DDU `mod`: LeakyReLU(0.01) + avg-pool/zero-pad shortcuts
    spectral_norm: bool = False  # soft SN on every Conv2d (never BN, never the final Linear)
    sn_coeff: float = 3.0  # DDU default coefficient
    conv_init: Callable[[Tensor], object] | None = None  # in-place init of every conv weight (None: PyTorch's),
    # applied by make_conv before the spectral-norm warm-up so the first estimate is for the final weights
    sn_warmup: int = 20  # power-iteration steps per SN conv at construction; 0 when a saved state (u, v, sigma and
    # the weights) is loaded next: the warm-up is most of building a 32x32 SN network (width-64 ResNet18, 1 thread:
    # 1.37 s with it, 0.18 s without, loading included)

    def __post_init__(self) -> None:
        if not self.sn_coeff > 0:
            raise ValueError(f"sn_coeff must be > 0, got {self.sn_coeff}")
        if isinstance(self.sn_warmup, bool) or not isinstance(self.sn_warmup, int) or self.sn_warmup < 0:
            raise ValueError(f"sn_warmup must be an int >= 0, got {self.sn_warmup!r}")


def conv_out_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Spatial output size of a Conv2d / floor-mode pooling on a (size x size) map."""
    return (size + 2 * padding - kernel_size) // stride + 1


def _unit(t: Tensor) -> Tensor:
    """t scaled to unit Frobenius norm (shape kept)."""
    return t / t.norm().clamp_min(L2_EPS)


class SNConv2d(nn.Conv2d):
    """Conv2d with DDU's soft spectral normalization of the convolution operator.

    sigma estimates the largest singular value of the linear map x -> conv2d(x, W) on inputs of shape
    (1, C_in, H, W) with this layer's stride and padding, by power iteration u -> W^T u (conv_transpose2d)
    -> W v (conv2d). The forward uses W_eff = W / max(1, sigma / coeff), so the layer is at most
    `coeff`-Lipschitz (up to the estimate's accuracy) and untouched when already below it.

    Why not `torch.nn.utils.parametrizations.spectral_norm`: it normalizes the norm of the weight reshaped
    to a (C_out, C_in*k*k) matrix. That does not bound the operator norm of the convolution, which for a
    k x k kernel can be up to k times larger (Tsuzuku et al. 2018) and depends on stride, padding and map
    size; so it neither matches DDU nor gives the intended Lipschitz bound. It also always divides by
    sigma instead of the soft max(1, sigma / coeff).

    State (buffers, saved in state_dict, fixed shapes from construction):
      sn_u  (1, C_out, H_out, H_out)  left singular vector estimate, unit norm
      sn_v  (1, C_in, H, H)           right singular vector estimate, unit norm
      sigma ()                        u^T W v at the last training step (the current estimate)
    Training forward: one power-iteration step (no grad, fp32, autocast off), then sigma = u^T W v with
    gradient w.r.t. W (u, v fixed, as DDU and Miyato et al. 2018). Eval forward: sigma = u^T W v from the
    stored u, v without touching any buffer (DDU does the same: it stays consistent with W after the last
    optimizer step). freeze() fixes W_eff for a network that no longer changes (the served scorer).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False, *, input_size: int, coeff: float = 3.0,
                 n_warmup: int = 20) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        if not coeff > 0:
            raise ValueError(f"coeff must be > 0, got {coeff}")
        self.coeff = float(coeff)
        self.input_size = int(input_size)
        out_size = conv_out_size(input_size, kernel_size, stride, padding)
        # conv_transpose2d maps H_out back to (H_out - 1) * s - 2p + k; when the strided conv floored
        # (e.g. 3x3, s=2, p=1 on an even H) one row/column is missing: output_padding (< stride) restores H.
        self.sn_output_padding = input_size - ((out_size - 1) * stride - 2 * padding + kernel_size)
        self.register_buffer("sn_u", _unit(torch.randn(1, out_channels, out_size, out_size)))
        self.register_buffer("sn_v", _unit(torch.randn(1, in_channels, input_size, input_size)))
        self.register_buffer("sigma", torch.ones(()))
        self.register_buffer("sn_frozen", None, persistent=False)  # W_eff fixed by freeze(), else None
        self.power_iteration(n_warmup)  # so the first forward already uses a sensible estimate

    def _fp32_off(self):
        """Autocast disabled: the power iteration needs fp32 (bf16 has ~3 significant digits)."""
        return torch.autocast(device_type=self.weight.device.type, enabled=False)

    @torch.no_grad()
    def power_iteration(self, n_iter: int = 1) -> None:
        """Run n_iter power-iteration steps on the current weight and store u, v, sigma.

        Call after re-initializing or rescaling the weight by hand; training does one step per forward.
        """
        with self._fp32_off():
            w = self.weight.detach().float()  # (C_out, C_in, k, k)
            u, v = self.sn_u.float(), self.sn_v.float()
            for _ in range(n_iter):
                # v <- W^T u / ||W^T u||, (1, C_in, H, H)
                v = _unit(F.conv_transpose2d(u, w, None, self.stride, self.padding, self.sn_output_padding))
                wv = F.conv2d(v, w, None, self.stride, self.padding)  # (1, C_out, H_out, H_out)
                u = _unit(wv)
            self.sn_u.copy_(u)
            self.sn_v.copy_(v)
            self.sigma.copy_((u * F.conv2d(v, w, None, self.stride, self.padding)).sum())  # u^T W v

    def estimate_sigma(self, update: bool = False) -> Tensor:
        """sigma = u^T W v, fp32 scalar, differentiable in W; one power-iteration step first if update."""
        with self._fp32_off():
            w = self.weight.float()  # differentiable cast: the gradient flows back to the weight
            v = self.sn_v.float()
            if update:
                with torch.no_grad():
                    v = _unit(F.conv_transpose2d(self.sn_u.float(), w.detach(), None, self.stride,
                                                 self.padding, self.sn_output_padding))
            wv = F.conv2d(v, w, None, self.stride, self.padding)  # (1, C_out, H_out, H_out), with grad
            u = _unit(wv.detach()) if update else self.sn_u.float()
            sigma = (u * wv).sum()  # = ||W v|| after an update
            if update:
                with torch.no_grad():
                    self.sn_u.copy_(u)
                    self.sn_v.copy_(v)
                    self.sigma.copy_(sigma.detach())
        return sigma

    def effective_weight(self, update: bool = False) -> Tensor:
        """W / max(1, sigma / coeff), same dtype as W; `update` also advances the power iteration."""
        factor = torch.clamp(self.estimate_sigma(update) / self.coeff, min=1.0)  # soft: 1 below coeff
        return self.weight / factor.to(self.weight.dtype)

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix W_eff as it is now for the eval forwards without autograd (sn_frozen, a non-persistent buffer: it
        follows .to(), stays out of state_dict): one convolution per forward instead of two, the same values. For a
        network whose weights no longer change (the served scorer): W, u or v changed afterwards are NOT seen until
        unfreeze() or train(). Training forwards and forwards with autograd on ignore it (the gradient reaches W)."""
        self.sn_frozen = self.effective_weight(update=False)

    def unfreeze(self) -> None:
        self.sn_frozen = None

    def train(self, mode: bool = True) -> SNConv2d:
        if mode:
            self.unfreeze()  # training changes W
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        w = self.sn_frozen
        if w is None or self.training or torch.is_grad_enabled():
            w = self.effective_weight(update=self.training)
        return self._conv_forward(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, input_size={self.input_size}, coeff={self.coeff}"


def spectral_norm_layers(model: nn.Module) -> Iterator[SNConv2d]:
    """Every spectrally normalized conv of `model`, in module order (for tests and logging sigma)."""
    return (m for m in model.modules() if isinstance(m, SNConv2d))


def freeze_spectral_norm(model: nn.Module) -> nn.Module:
    """SNConv2d.freeze() on every spectrally normalized conv of `model` (call after loading its weights, in eval
    mode: serving). A one-image forward of the served width-8 ResNet18 takes about half the time (bench/README.md,
    2026-11-30: 1.6-2.3 ms instead of 3.4-4.8 ms on 2 CPU cores). model.train() undoes it."""
    for conv in spectral_norm_layers(model):
        conv.freeze()
    return model


def make_activation(leaky: bool) -> nn.Module:
    """LeakyReLU(0.01) under DDU's `mod` (keeps sensitivity to feature-space distance), else ReLU."""
    return nn.LeakyReLU(LEAKY_SLOPE) if leaky else nn.ReLU()


def make_conv(spec: LayerSpec, c_in: int, c_out: int, kernel_size: int, stride: int,
              size: int) -> tuple[nn.Conv2d, int]:
    """Bias-free 'same'-padded conv (a BatchNorm always follows) and its output size on a size x size map."""
    padding = kernel_size // 2
    if spec.spectral_norm:
        conv = SNConv2d(c_in, c_out, kernel_size, stride, padding, input_size=size, coeff=spec.sn_coeff,
                        n_warmup=0 if spec.conv_init else spec.sn_warmup)
    else:
        conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
    if spec.conv_init is not None:
        with torch.no_grad():
            spec.conv_init(conv.weight)
        if isinstance(conv, SNConv2d):
            conv.power_iteration(spec.sn_warmup)  # the warm-up, on the initialised weight
    return conv, conv_out_size(size, kernel_size, stride, padding)


class PadShortcut(nn.Module):
    """DDU's `AvgPoolShortCut`: average-pool by `stride`, then zero-pad the extra output channels.

    Parameter-free, so the residual path adds no unconstrained (non-normalized) linear map.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"PadShortcut cannot reduce channels ({c_in} -> {c_out})")
        self.extra, self.stride = c_out - c_in, stride

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, ceil(H/s), ceil(W/s))
        if self.stride > 1:
            # On an odd map the strided 3x3 conv gives ceil(H/s) rows; a kernel-s pool would give
            # floor(H/s) (and fail on 1x1), so like DDU subsample with a 1x1 kernel there instead.
            even = x.shape[-1] % self.stride == 0 and x.shape[-2] % self.stride == 0
            x = F.avg_pool2d(x, self.stride if even else 1, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x  # zeros after the C_in channels

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


def shortcut(spec: LayerSpec, c_in: int, c_out: int, stride: int, size: int) -> nn.Module:
    """Residual shortcut: identity when shapes match, else avg-pool+zero-pad (leaky) or 1x1 conv + BN."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    if spec.leaky:
        return PadShortcut(c_in, c_out, stride)
    conv, _ = make_conv(spec, c_in, c_out, 1, stride, size)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def l2_normalize(z: Tensor, eps: float = L2_EPS) -> Tensor:
    """(B, d) -> (B, d) rows z / max(||z||_2, eps); the norm is taken in fp32 even under autocast."""
    return F.normalize(z.float(), dim=1, eps=eps).to(z.dtype)


def simplex_etf(in_features: int, out_features: int, c: int) -> Tensor:
    """(out, in) fp32 weight sqrt(c/(c-1)) (I - 11^T/c) of a bias-free Linear, I and 1 rectangular (out x in).

    Exactly the ICML 2025 code (Harun et al., NC-OOD `resnet/resnet_etf.py`:157-163): `(c/(c-1))**(1/2) *
    (torch.eye(*shape) - (1/c) * torch.ones(*shape))` with `shape` the Linear's weight shape (out, in) and
    `c = output_dim`, the PROJECTOR's output dimension, for both of its layers (:157 and :161), no random rotation.
    For a square shape the rows form a simplex ETF: W W^T = c/(c-1) (I - 11^T/c) when c = in = out.
    """
    if c < 2:
        raise ValueError(f"simplex_etf needs c >= 2, got {c}")
    eye = torch.eye(out_features, in_features, dtype=torch.float64)  # rectangular identity
    ones = torch.ones(out_features, in_features, dtype=torch.float64)
    return (math.sqrt(c / (c - 1)) * (eye - ones / c)).float()


class ETFProjector(nn.Module):
    """Fixed (never trained) projector Linear d->4d, ReLU, Linear 4d->d, bias-free, with the ICML 2025 code's ETF
    weights (`simplex_etf`, c = d for both layers: `resnet_etf.py`:150-163 with output_dim 512 and hidden_mlp 2048,
    `pretrain_resnet_nc.sh`:25-26). Its output is L2-normalized before the classifier (`resnet_etf.py`:211; the
    code's eps 1e-8 there vs ncood's L2_EPS only matters for an exactly zero vector).

    The weights are buffers, not parameters: no optimizer ever sees them, and they are saved in state_dict.
    """

    def __init__(self, dim: int, expansion: int = 4) -> None:
        super().__init__()
        hidden = expansion * dim
        self.register_buffer("w1", simplex_etf(dim, hidden, c=dim))  # (4d, d)
        self.register_buffer("w2", simplex_etf(hidden, dim, c=dim))  # (d, 4d)

    def forward(self, z: Tensor) -> Tensor:  # (B, d) -> (B, d)
        return F.linear(F.relu(F.linear(z, self.w1.to(z.dtype))), self.w2.to(z.dtype))


class FeatureClassifier(nn.Module):
    """Encoder + linear head with the same interface for every architecture (timm-style split).

    Subclasses build the encoder and implement `forward_features`; the head is shared:
      forward_features(x) -> z (B, d), pre-normalization (||z|| is the TMLR 2024 feature-norm OoD score)
      classifier_input(z) -> what the classifier sees: z, z / max(||z||, eps) if l2, normalize(P(z)) with the
                             ETF projector P (`attach_etf_projector`, ICML 2025 NC control)
      forward_head(z)     -> logits (B, C) = classifier(classifier_input(z))
      forward(x)          -> (logits, z)
    `classifier` is a plain nn.Linear (C x d): never spectrally normalized.
    """

    def __init__(self, feature_dim: int, num_classes: int, l2: bool) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.l2 = bool(l2)
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.projector: ETFProjector | None = None

    def attach_etf_projector(self) -> "FeatureClassifier":
        """Route the classifier input through a fixed simplex-ETF projector, L2-normalized (ICML 2025)."""
        self.projector = ETFProjector(self.feature_dim)
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def classifier_input(self, z: Tensor) -> Tensor:
        if self.projector is not None:
            return l2_normalize(self.projector(z))
        return l2_normalize(z) if self.l2 else z

    def forward_head(self, z: Tensor) -> Tensor:
        return self.classifier(self.classifier_input(z))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.forward_features(x)  # (B, d)
        return self.forward_head(z), z
