"""ConvNeXt-Tiny modified for CIFAR-sized inputs as in the TMLR 2024 paper, on timm's ConvNeXt.

TMLR 2024 ("Exploring Simple, High Quality OoD Detection with L2 Normalization", appendix A.1): "ConvNeXt(Tiny) was
modified from its default PyTorch implementation so that it would converge better on CIFAR10. The kernel size of
the first layer was lowered from 4 to 3, the stride was lowered from 4 to 2. All other kernel sizes were lowered
from 7 to 3. It was trained using a single cosine annealing schedule with the AdamW optimizer."

Our reading of that sentence:
- the base is torchvision's `convnext_tiny` (Liu et al. 2022): depths (3, 3, 9, 3), dims (96, 192, 384, 768),
  layer scale 1e-6, stochastic depth 0.1 (torchvision's default for convnext_tiny), LayerNorm eps 1e-6;
- "the first layer" is the patchify stem conv: kernel 4 -> 3, stride 4 -> 2, its padding (0) unchanged, so a 32x32
  input gives a 15x15 map (then 7, 3, 1 after the three downsampling layers);
- "all other kernel sizes ... from 7 to 3" are the depthwise 7x7 convs of every block (the only 7s in the
  network). The downsampling convs have kernel 2 (not 7) and the pointwise layers kernel 1: both unchanged.
timm's ConvNeXt is the same network as torchvision's (block: depthwise conv, LayerNorm, Linear 4x, GELU, Linear,
layer scale, drop path; head: global average pool, LayerNorm, Linear) and takes the depthwise kernel size as a
parameter; its patch stem only builds kernel = stride, so the stem conv is replaced (initialised as timm and
torchvision do: truncated normal std 0.02, zero bias). The features z are the head's LayerNorm output (the
input of the final Linear), d = 768 at width 64.

`width` scales the four stage widths by width / 64 (width 64 = ConvNeXt-Tiny, d = 12 * width). Inputs smaller
than 32x32 (digits, 8x8) reach a 1x1 map before the last downsampling layer; a kernel-2 stride-2 conv would
make it 0x0, so such a layer gets padding 1 (output 1x1), the counterpart of VGG's skipped pool.
DDU's spectral norm and leaky/GAP do not apply (LayerNorm/GELU network): the registry refuses them.
"""

from __future__ import annotations

from torch import Tensor, nn

from ncood.models.layers import FeatureClassifier, LayerSpec, conv_out_size
from ncood.models.registry import register_model

DEPTHS = (3, 3, 9, 3)
DIMS = (96, 192, 384, 768)  # at width 64
KERNEL = 3  # TMLR A.1: depthwise kernels 7 -> 3
STEM_KERNEL, STEM_STRIDE = 3, 2  # TMLR A.1: first layer kernel 4 -> 3, stride 4 -> 2
DROP_PATH = 0.1  # torchvision convnext_tiny's stochastic_depth_prob default
LAYER_SCALE = 1e-6


def _init_like_convnext(m: nn.Module) -> None:
    """timm/torchvision ConvNeXt init of a Conv2d/Linear: truncated normal std 0.02, zero bias."""
    nn.init.trunc_normal_(m.weight, std=0.02)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


class ConvNeXtCifar(FeatureClassifier):
    """forward_features: (B, in_channels, S, S) -> (B, 12 * width), the LayerNorm'ed pooled features."""

    def __init__(self, *, num_classes: int, in_channels: int, input_size: int, width: int, l2: bool,
                 spec: LayerSpec) -> None:
        from timm.models.convnext import ConvNeXt as TimmConvNeXt  # here: importing timm costs every process ~0.5 s

        dims = tuple(max(1, d * width // 64) for d in DIMS)
        super().__init__(dims[-1], num_classes, l2)
        # num_classes=0: timm's head keeps pool + LayerNorm and has no Linear (ours is `classifier`)
        self.net = TimmConvNeXt(in_chans=in_channels, num_classes=0, depths=DEPTHS, dims=dims, kernel_sizes=KERNEL,
                                ls_init_value=LAYER_SCALE, stem_type="patch", patch_size=4, drop_path_rate=DROP_PATH)
        stem = nn.Conv2d(in_channels, dims[0], STEM_KERNEL, stride=STEM_STRIDE, padding=0, bias=True)
        _init_like_convnext(stem)
        self.net.stem[0] = stem
        size = conv_out_size(input_size, STEM_KERNEL, STEM_STRIDE, 0)
        if size < 1:
            raise ValueError(f"convnext_tiny needs inputs of at least {STEM_KERNEL}x{STEM_KERNEL}, got {input_size}")
        for stage in list(self.net.stages)[1:]:
            down = stage.downsample[1]  # (LayerNorm, Conv2d k2 s2)
            if size < down.kernel_size[0]:
                down.padding = (1, 1)
            size = conv_out_size(size, down.kernel_size[0], down.stride[0], down.padding[0])
        _init_like_convnext(self.classifier)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)  # (B, d)


@register_model(toggles=())
def convnext_tiny(**kw) -> ConvNeXtCifar:
    return ConvNeXtCifar(**kw)
