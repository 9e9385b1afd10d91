"""The one model registry: `@register_model` fills it, `create_model` builds by name (timm-style).

A new architecture is one decorated function `def name(**kw) -> FeatureClassifier` in its own module,
imported by `ncood/models/__init__.py`. The function receives num_classes, in_channels, input_size, width,
l2 and `spec` (a LayerSpec with DDU's leaky/GAP and spectral-norm toggles, Mukhoti et al. 2021).
`@register_model` says the model supports both DDU toggles; `@register_model(toggles=())` registers one that
does not (LayerNorm/GELU networks such as ConvNeXt and CCT): create_model then refuses them instead of
silently building a different network. `defaults` says which supported toggles a config turns on when it leaves
them unset (ncood.config): all of them unless the model says otherwise (VGG16: none, see ncood/models/vgg.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor

from ncood.models.layers import FeatureClassifier, LayerSpec

ModelFn = Callable[..., FeatureClassifier]
DDU_TOGGLES = ("spectral_norm", "leaky_gap")
_MODELS: dict[str, ModelFn] = {}
_TOGGLES: dict[str, frozenset[str]] = {}  # name -> the DDU toggles the model implements
_DEFAULTS: dict[str, frozenset[str]] = {}  # name -> the toggles on when a config leaves them unset


def register_model(fn: ModelFn | None = None, *, toggles: tuple[str, ...] = DDU_TOGGLES,
                   defaults: tuple[str, ...] | None = None):
    """Decorator (bare or with toggles=... / defaults=...): register `fn` under its function name (duplicates are an
    error). defaults: the toggles on by default, a subset of `toggles` (None: all of them)."""
    defaults = toggles if defaults is None else defaults
    unknown = set(toggles) - set(DDU_TOGGLES)
    if unknown:
        raise ValueError(f"unknown toggles {sorted(unknown)}; known: {DDU_TOGGLES}")
    if not set(defaults) <= set(toggles):
        raise ValueError(f"defaults {sorted(defaults)} must be among the model's toggles {sorted(toggles)}")

    def decorate(f: ModelFn) -> ModelFn:
        name = f.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name], _TOGGLES[name], _DEFAULTS[name] = f, frozenset(toggles), frozenset(defaults)
        return f

    return decorate if fn is None else decorate(fn)


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    return sorted(_MODELS)


def models_supporting(toggle: str) -> list[str]:
    """Sorted names of the models that implement DDU toggle `toggle` ("spectral_norm" or "leaky_gap")."""
    if toggle not in DDU_TOGGLES:
        raise ValueError(f"unknown toggle {toggle!r}; known: {DDU_TOGGLES}")
    return sorted(n for n, t in _TOGGLES.items() if toggle in t)


def toggle_default(name: str, toggle: str) -> bool:
    """Whether DDU toggle `toggle` is on for model `name` when a config leaves it unset."""
    if toggle not in DDU_TOGGLES:
        raise ValueError(f"unknown toggle {toggle!r}; known: {DDU_TOGGLES}")
    return toggle in _DEFAULTS.get(name, frozenset())


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def create_model(name: str, *, num_classes: int, in_channels: int = 3, input_size: int = 32,
                 width: int = 64, l2: bool = False, spectral_norm: bool = False, sn_coeff: float = 3.0,
                 leaky_gap: bool = False, etf_projector: bool = False,
                 state_dict: Mapping[str, Tensor] | None = None) -> FeatureClassifier:
    """Build model `name` (see list_models()).

    width: the size knob; 64 builds the papers' network, smaller values scale every channel count (or CCT's
           embedding) by width / 64, so the feature dimension is proportional to it (see each module's docstring).
    input_size: side of the square input map; sets the spectral-norm operator shapes and VGG's pooling.
    l2: classifier sees z / max(||z||, eps) (seed paper eq. 9); features are returned before it.
    spectral_norm / sn_coeff: DDU soft spectral norm of every conv. leaky_gap: DDU's `mod`.
    etf_projector: the classifier sees the L2-normalized output of a fixed simplex-ETF projector (ICML 2025).
    state_dict: the saved network to load (strictly, like timm's checkpoint_path): built without the spectral-norm
           warm-up, whose u, v and sigma the state replaces anyway.
    """
    fn = _MODELS.get(name)
    if fn is None:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("input_size", input_size), ("width", width)):
        _check_positive_int(arg, value)
    for toggle, on in (("spectral_norm", spectral_norm), ("leaky_gap", leaky_gap)):
        if on and toggle not in _TOGGLES[name]:
            raise ValueError(f"model {name!r} does not support {toggle} (DDU's toggle for conv/BN networks); "
                             f"models that do: {', '.join(models_supporting(toggle))}")
    spec = LayerSpec(leaky=bool(leaky_gap), spectral_norm=bool(spectral_norm), sn_coeff=float(sn_coeff),
                     sn_warmup=0 if state_dict is not None else LayerSpec.sn_warmup)
    model = fn(num_classes=num_classes, in_channels=in_channels, input_size=input_size, width=width,
               l2=bool(l2), spec=spec)
    model = model.attach_etf_projector() if etf_projector else model
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model
