"""WideResNet-28-10 as in DDU (Mukhoti et al. 2021, code `net/wide_resnet.py`), DDU's own main architecture.

Zagoruyko & Komodakis 2016 pre-activation WRN for 32x32 inputs, with DDU's choices (file:line of DDU's
`net/wide_resnet.py`):
- depth 28 -> 4 blocks per stage ((28 - 4) / 6, l.85/111), widen factor 10: stage widths 16, 160, 320, 640
  (l.114), strides 1, 1, 2, 2 (stem, stages; l.115);
- block (l.49-60): out = conv2(dropout(act(bn2(conv1(act(bn1(x))))))) + shortcut(x); dropout 0.3 (l.71: the
  default, which DDU's train.py:66-72 never overrides), BatchNorm momentum 0.01 (l.17, l.74);
- shortcut when the shape changes: a strided 1x1 conv *without* BatchNorm (l.45), or under DDU's `mod`
  (leaky/GAP) average pooling + zero-padded channels (l.33-42), with LeakyReLU(0.01) everywhere (l.27);
- head: act(bn(x)), global average pooling (l.162-164; `avg_pool2d(8)` there = global on 32x32), d = 640;
- spectral norm on every conv, 3x3 through the convolution operator, 1x1 as a matrix (l.98-105): our SNConv2d
  computes the operator norm for both, which for a 1x1 conv equals the matrix norm;
- Kaiming-normal (fan_out) initialisation of every conv and of the linear head, zero head bias (l.130-140).
`width` scales every channel count by width / 64: width 64 is WRN-28-10 exactly (d = 10 * width = 640);
width 8 is the same network with an eighth of the channels (widen factor 1.25, stem 2 channels), for CPU tests.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from torch import Tensor, nn

from ncood.models.layers import FeatureClassifier, LayerSpec, PadShortcut, make_activation, make_conv
from ncood.models.registry import register_model

DEPTH, WIDEN = 28, 10
STAGES = (16, 16 * WIDEN, 32 * WIDEN, 64 * WIDEN)  # channels at width 64: stem, then the three stages
STRIDES = (1, 2, 2)  # first block of each stage
DROPOUT = 0.3
BN_MOMENTUM = 0.01  # PyTorch convention: running stats move 1% per step


class WideBlock(nn.Module):
    """Pre-activation wide basic block: conv2(drop(act(bn2(conv1(act(bn1(x))))))) + shortcut(x)."""

    def __init__(self, spec: LayerSpec, c_in: int, c_out: int, stride: int, size: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=BN_MOMENTUM)
        self.conv1, mid = make_conv(spec, c_in, c_out, 3, stride, size)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM)
        self.dropout = nn.Dropout(DROPOUT)
        self.conv2, self.out_size = make_conv(spec, c_out, c_out, 3, 1, mid)
        self.act = make_activation(spec.leaky)
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        elif spec.leaky:
            self.shortcut = PadShortcut(c_in, c_out, stride)
        else:
            self.shortcut, _ = make_conv(spec, c_in, c_out, 1, stride, size)  # no BN here (DDU l.45)

    def forward(self, x: Tensor) -> Tensor:  # (B, c_in, H, H) -> (B, c_out, out_size, out_size)
        out = self.conv1(self.act(self.bn1(x)))
        out = self.conv2(self.dropout(self.act(self.bn2(out))))
        return out + self.shortcut(x)


class WideResNet(FeatureClassifier):
    """forward_features: (B, in_channels, S, S) -> (B, 10 * width) for WRN-28-10."""

    def __init__(self, *, num_classes: int, in_channels: int, input_size: int, width: int, l2: bool,
                 spec: LayerSpec) -> None:
        channels = [max(1, c * width // 64) for c in STAGES]  # exact at width 64
        super().__init__(channels[-1], num_classes, l2)
        slope = "leaky_relu" if spec.leaky else "relu"
        spec = replace(spec, conv_init=partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity=slope))
        self.stem, size = make_conv(spec, in_channels, channels[0], 3, 1, input_size)
        blocks: list[nn.Module] = []
        c = channels[0]
        for c_out, stride in zip(channels[1:], STRIDES):
            for i in range((DEPTH - 4) // 6):
                block = WideBlock(spec, c, c_out, stride if i == 0 else 1, size)
                c, size = c_out, block.out_size
                blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c, momentum=BN_MOMENTUM)
        self.act = make_activation(spec.leaky)
        self.pool = nn.AdaptiveAvgPool2d(1)
        nn.init.kaiming_normal_(self.classifier.weight, mode="fan_out", nonlinearity=slope)  # DDU l.139-140
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.bn(self.blocks(self.stem(x))))).flatten(1)  # (B, d)


@register_model
def wide_resnet28_10(**kw) -> WideResNet:
    return WideResNet(**kw)
