"""CIFAR VGG16 with batch norm as in DDU (Mukhoti et al. 2021, code `net/vgg.py`), used by TMLR 2024 (Tables 2, 4).

Simonyan & Zisserman 2015 configuration "D" for 32x32 inputs: 13 conv-BN-act layers and 5 max-pools,
channels scaled by width / 64, then global average pooling (d = 8 * width = 512) and the linear head.
Spectral norm applies to every conv; leaky_gap only switches the activation (VGG has no shortcuts). Both are off
unless asked for: TMLR 2024 App. A.1 says "All ResNet models use spectral normalization, global average pooling,
and Leaky ReLUs" and nothing of the kind for VGG16 (the seed paper has no VGG), so ncood's default VGG16 is the plain
network, as its tmlr_table4 preset trains it.
"""

from __future__ import annotations

from torch import Tensor, nn

from ncood.models.layers import FeatureClassifier, LayerSpec, make_activation, make_conv
from ncood.models.registry import register_model

POOL = "M"
VGG16 = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL)


class VGG(FeatureClassifier):
    """forward_features: (B, in_channels, S, S) -> (B, last channels * width / 64)."""

    def __init__(self, cfg: tuple, *, num_classes: int, in_channels: int, input_size: int, width: int,
                 l2: bool, spec: LayerSpec) -> None:
        channels = [v * width // 64 for v in cfg if v != POOL]  # every entry is a multiple of 64: exact
        super().__init__(channels[-1], num_classes, l2)
        layers: list[nn.Module] = []
        c, size = in_channels, input_size
        for v in cfg:
            if v == POOL:
                # Small inputs (8x8 digits) reach 1x1 after three pools; MaxPool2d(2) on a 1x1 map would
                # give an empty 0x0 map, so a pool is skipped once the map is already 1x1.
                if size > 1:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            conv, size = make_conv(spec, c, v * width // 64, 3, 1, size)
            c = v * width // 64
            layers += [conv, nn.BatchNorm2d(c), make_activation(spec.leaky)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # already 1x1 at 32x32; makes any input size give (B, d)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)  # (B, d)


@register_model(defaults=())
def vgg16(**kw) -> VGG:
    return VGG(VGG16, **kw)
