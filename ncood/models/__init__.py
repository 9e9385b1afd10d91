"""DDU-style CIFAR networks (ResNet18/50, VGG16) created by name through one registry.

    from ncood.models import create_model, list_models
    model = create_model("resnet18", num_classes=10, l2=True, spectral_norm=True, leaky_gap=True)
    logits, z = model(x)   # z: pre-normalization features, (B, model.feature_dim)

Architectures follow DDU (Mukhoti et al. 2021) as used by the seed paper ("Inducing Early Neural
Collapse in Deep Neural Networks for Improved OoD Detection"), which adds L2 feature normalization.
"""

from ncood.models import resnet, vgg  # noqa: F401  (importing fills the registry)
from ncood.models.layers import (ETFProjector, FeatureClassifier, LayerSpec, SNConv2d, l2_normalize, simplex_etf,
                                 spectral_norm_layers)
from ncood.models.registry import create_model, list_models, register_model

__all__ = [
    "ETFProjector",
    "FeatureClassifier",
    "LayerSpec",
    "SNConv2d",
    "create_model",
    "l2_normalize",
    "list_models",
    "register_model",
    "simplex_etf",
    "spectral_norm_layers",
]
