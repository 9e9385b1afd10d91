"""The papers' networks created by name through one registry: DDU-style CIFAR ResNet18/50, VGG16 and
WideResNet-28-10, and the TMLR 2024 paper's ConvNeXt-Tiny (CIFAR-modified) and CCT-7/3x1.

    from ncood.models import create_model, list_models
    model = create_model("resnet18", num_classes=10, l2=True, spectral_norm=True, leaky_gap=True)
    logits, z = model(x)   # z: pre-normalization features, (B, model.feature_dim)

Architectures follow DDU (Mukhoti et al. 2021) as used by the seed paper ("Inducing Early Neural
Collapse in Deep Neural Networks for Improved OoD Detection"), which adds L2 feature normalization.
"""

from ncood.models import cct, convnext, resnet, vgg, wide_resnet  # noqa: F401  (importing fills the registry)
from ncood.models.batch_norm import SplitBatchNorm2d, split_batch_norm
from ncood.models.layers import (ETFProjector, FeatureClassifier, LayerSpec, SNConv2d, freeze_spectral_norm,
                                 l2_normalize, simplex_etf, spectral_norm_layers)
from ncood.models.registry import create_model, list_models, models_supporting, register_model, toggle_default

__all__ = [
    "ETFProjector",
    "FeatureClassifier",
    "LayerSpec",
    "SNConv2d",
    "SplitBatchNorm2d",
    "create_model",
    "freeze_spectral_norm",
    "l2_normalize",
    "list_models",
    "models_supporting",
    "register_model",
    "toggle_default",
    "simplex_etf",
    "spectral_norm_layers",
    "split_batch_norm",
]
