"""CIFAR ResNet18 / ResNet50 as in DDU (Mukhoti et al. 2021, code `net/resnet.py`), used by the seed paper.

He et al. 2016 residual networks with the CIFAR stem (3x3 stride-1 conv + BN + act, no max-pool), four
stages of width * (1, 2, 4, 8) channels, strides (1, 2, 2, 2), and global average pooling before the
classifier. ResNet18 = basic blocks [2, 2, 2, 2] (d = 8 * width = 512); ResNet50 = bottlenecks [3, 4, 6, 3]
with expansion 4 (d = 32 * width = 2048). Both block kinds are one `ResidualBlock` with a different conv
plan. DDU's toggles (spectral norm, leaky/GAP) come in through `LayerSpec`; see `layers.py`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ncood.models.layers import FeatureClassifier, LayerSpec, make_activation, make_conv, shortcut
from ncood.models.registry import register_model

# Main path of a block: (kernel_size, output channels as a multiple of `planes`) per conv. The first 3x3
# conv carries the block's stride (basic block: conv1; bottleneck: the middle conv, "ResNet v1.5").
BASIC = ((3, 1), (3, 1))
BOTTLENECK = ((1, 1), (3, 1), (1, 4))


class ResidualBlock(nn.Module):
    """act(main(x) + shortcut(x)); main = [conv-BN-act]* then conv-BN, following `plan`."""

    def __init__(self, spec: LayerSpec, plan: tuple[tuple[int, int], ...], c_in: int, planes: int,
                 stride: int, size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, s, stride_left = c_in, size, stride
        for i, (kernel, mult) in enumerate(plan):
            conv_stride = stride_left if kernel == 3 else 1
            stride_left = 1 if kernel == 3 else stride_left
            conv, s = make_conv(spec, c, planes * mult, kernel, conv_stride, s)  # s: map side after conv
            c = planes * mult
            layers += [conv, nn.BatchNorm2d(c)]
            if i < len(plan) - 1:
                layers.append(make_activation(spec.leaky))
        self.main = nn.Sequential(*layers)
        self.shortcut = shortcut(spec, c_in, c, stride, size)  # identity / avg-pool+pad / 1x1 conv+BN
        self.act = make_activation(spec.leaky)
        self.c_out, self.out_size = c, s

    def forward(self, x: Tensor) -> Tensor:  # (B, c_in, H, H) -> (B, c_out, out_size, out_size)
        return self.act(self.main(x) + self.shortcut(x))


class ResNet(FeatureClassifier):
    """CIFAR ResNet; forward_features: (B, in_channels, S, S) -> (B, 8 * width * expansion)."""

    def __init__(self, plan: tuple[tuple[int, int], ...], depths: tuple[int, ...], *, num_classes: int,
                 in_channels: int, input_size: int, width: int, l2: bool, spec: LayerSpec) -> None:
        expansion = plan[-1][1]
        super().__init__(8 * width * expansion, num_classes, l2)
        conv, size = make_conv(spec, in_channels, width, 3, 1, input_size)  # stride 1: no downsampling
        self.stem = nn.Sequential(conv, nn.BatchNorm2d(width), make_activation(spec.leaky))
        blocks: list[nn.Module] = []
        c = width
        for stage, depth in enumerate(depths):
            planes = width * 2**stage  # width * (1, 2, 4, 8)
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                block = ResidualBlock(spec, plan, c, planes, stride, size)
                c, size = block.c_out, block.out_size
                blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)  # GAP: any input size (DDU's fixed avg_pool2d(4) needs 32x32)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.blocks(self.stem(x))).flatten(1)  # (B, d)


@register_model
def resnet18(**kw) -> ResNet:
    return ResNet(BASIC, (2, 2, 2, 2), **kw)


@register_model
def resnet50(**kw) -> ResNet:
    return ResNet(BOTTLENECK, (3, 4, 6, 3), **kw)
