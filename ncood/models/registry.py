"""The one model registry: `@register_model` fills it, `create_model` builds by name (timm-style).

A new architecture is one decorated function `def name(**kw) -> FeatureClassifier` in its own module,
imported by `ncood/models/__init__.py`. The function receives num_classes, in_channels, input_size, width,
l2 and `spec` (a LayerSpec with DDU's leaky/GAP and spectral-norm toggles, Mukhoti et al. 2021).
"""

from __future__ import annotations

from collections.abc import Callable

from ncood.models.layers import FeatureClassifier, LayerSpec

ModelFn = Callable[..., FeatureClassifier]
_MODELS: dict[str, ModelFn] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Decorator: register `fn` under its function name (duplicates are an error, not an override)."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    return sorted(_MODELS)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def create_model(name: str, *, num_classes: int, in_channels: int = 3, input_size: int = 32,
                 width: int = 64, l2: bool = False, spectral_norm: bool = False, sn_coeff: float = 3.0,
                 leaky_gap: bool = False, etf_projector: bool = False) -> FeatureClassifier:
    """Build model `name` (see list_models()).

    width: base channel count (64 as in the papers; 8 is a tiny CPU variant of the same architecture).
    input_size: side of the square input map; sets the spectral-norm operator shapes and VGG's pooling.
    l2: classifier sees z / max(||z||, eps) (seed paper eq. 9); features are returned before it.
    spectral_norm / sn_coeff: DDU soft spectral norm of every conv. leaky_gap: DDU's `mod`.
    etf_projector: the classifier sees the L2-normalized output of a fixed simplex-ETF projector (ICML 2025).
    """
    fn = _MODELS.get(name)
    if fn is None:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("input_size", input_size), ("width", width)):
        _check_positive_int(arg, value)
    spec = LayerSpec(leaky=bool(leaky_gap), spectral_norm=bool(spectral_norm), sn_coeff=float(sn_coeff))
    model = fn(num_classes=num_classes, in_channels=in_channels, input_size=input_size, width=width,
               l2=bool(l2), spec=spec)
    return model.attach_etf_projector() if etf_projector else model
