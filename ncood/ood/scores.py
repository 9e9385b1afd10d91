"""The OoD score registry: every per-image score, higher = more in-distribution.

A score is one decorated function `fn(inputs: ScoreInputs, fitted: Fitted) -> (N,)` registered with
`register_score(name, space=..., params=..., fit=...)`. What the registry knows of each score:

    space    the feature space it reads (tested per score in tests/test_ood.py):
               "raw"     z, the encoder output before any normalization (ScoreInputs.features)
               "input"   what the classifier multiplies: z / max(||z||, eps) for L2 models (seed paper eq. 9),
                         normalize(P(z)) for ICML 2025 ETF-projector models, z otherwise (ScoreInputs.classifier_input)
               "logits"  the logits
             A score that needs the logits beside its features says so with `logits=True` (NECO x max logit;
             ViM, ReAct and ASH recompute logits from the input with the head (W, b) instead).
    params   a frozen dataclass of its hyperparameters (None: it has none). Overrides go through
             `fit_scores(params=...)`; `score_params()` flattens them into the MLflow params score/<name>/<field>.
    fit      fit(data: FitData, params) -> state, run once per evaluation on the train-set features. A score may
             `share` another score's fit (NECO x max logit reuses NECO's PCA: one SVD per evaluation, not two).
    diagnostics
             state -> {name: float}: what the fit chose, logged as <score>/<name> (gmm/jitter, vim/alpha, ...).
    served   whether the MLflow scorer computes it (KNN is not: its state is the whole train-feature bank).

The scores themselves: the DDU score, the TMLR feature norm and the logit baselines in ncood/ood/baselines.py,
the post-hoc detectors in ncood/ood/posthoc.py. Every score returns float64 and compute_scores refuses
non-finite values (never dropped silently).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ncood import keys
from ncood.ood.gaussian import ClassGaussians

__all__ = ["SCORES", "SPACES", "Space", "Score", "ScoreInputs", "FitData", "Fitted", "Head", "ScoreFit",
           "register_score", "fit_scores", "compute_scores", "score_params", "resolve_params", "fit_diagnostics",
           "served_scores",
           "pack_states", "unpack_states"]

Space = Literal["raw", "input", "logits"]
SPACES: tuple[str, ...] = ("raw", "input", "logits")


@dataclass(frozen=True)
class ScoreInputs:
    """What one feature pass gives for an image set, and what the scores computed on it share (`shared`)."""

    features: Tensor  # (N, d) raw z, before any normalization
    logits: Tensor | None = None  # (N, C); None only when fitting scores that need none
    classifier_input: Tensor | None = None  # (N, d') what the classifier multiplies; None: z itself
    _shared: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def shared(self, key: Hashable, compute: Callable[[], Tensor], of: Any = None) -> Tensor:
        """compute() once per (key, `of`) for these inputs: an intermediate several scores read (the float64 spaces,
        NECO's ratio for neco and neco_maxlogit), made once per compute_scores call. `of`: the fitted state it
        depends on, matched by identity and kept alive with the value (its id cannot be reused while the value is
        kept). Treat the value as read-only."""
        memo_key = (key, id(of))
        if memo_key not in self._shared:
            self._shared[memo_key] = (of, compute())
        return self._shared[memo_key][1]

    def space64(self, name: str) -> Tensor:
        """space(name) in float64, converted once for all the scores that read it."""
        return self.shared(("float64", name), lambda: self.space(name).double())

    def space(self, name: str) -> Tensor:
        """The (N, .) tensor of feature space `name` ("raw", "input", "logits")."""
        if name == "raw":
            return self.features
        if name == "input":
            return self.features if self.classifier_input is None else self.classifier_input
        if name == "logits":
            if self.logits is None:
                raise ValueError("this score reads the logits, but ScoreInputs.logits is None")
            return self.logits
        raise ValueError(f"feature space must be one of {SPACES}, got {name!r}")

    def __len__(self) -> int:
        return self.features.shape[0]


@dataclass(frozen=True)
class Head:
    """The classifier as tensors: logits = x W^T + b for x in the "input" space (ReAct, ASH and ViM need it)."""

    weight: Tensor  # (C, d')
    bias: Tensor | None = None  # (C,)

    @classmethod
    def of(cls, linear: nn.Linear) -> Head:
        b = linear.bias
        return cls(linear.weight.detach().clone(), None if b is None else b.detach().clone())

    def __call__(self, x: Tensor) -> Tensor:
        """(N, d') -> (N, C) float64 logits."""
        x = x.double()
        w, b = self._float64
        return torch.nn.functional.linear(x, w.to(x.device), None if b is None else b.to(x.device))

    @cached_property  # frozen dataclass: cached_property writes the instance __dict__ directly
    def _float64(self) -> tuple[Tensor, Tensor | None]:
        """(W, b) in float64, converted once (ViM, ReAct and ASH call the head on every scored batch)."""
        return self.weight.double(), None if self.bias is None else self.bias.double()

    def to(self, device: torch.device | str) -> Head:
        return Head(self.weight.to(device), None if self.bias is None else self.bias.to(device))


@dataclass(frozen=True)
class FitData:
    """What a fit hook sees: the train-set inputs, their labels and the classifier."""

    train: ScoreInputs
    labels: Tensor  # (N,) int64 in [0, C)
    num_classes: int
    head: Head | None = None

    def need_head(self, score: str) -> Head:
        return _require_head(self.head, score)


def _require_head(head: Head | None, score: str) -> Head:
    if head is None:
        raise ValueError(f"score {score!r} recomputes logits and needs the classifier: pass head=Head.of(...) "
                         "to fit_scores (evaluate() does)")
    return head


@dataclass(frozen=True)
class Fitted:
    """What a score function sees beside the inputs: its fit state, its params and the classifier."""

    state: Any = None
    params: Any = None
    head: Head | None = None

    def need_head(self, score: str) -> Head:
        return _require_head(self.head, score)


FitHook = Callable[[FitData, Any], Any]


@dataclass(frozen=True)
class Score:
    name: str
    fn: Callable[[ScoreInputs, Fitted], Tensor]
    space: str
    logits: bool = False  # also reads the logits
    params: Any = None  # frozen dataclass instance with the defaults, or None
    fit: FitHook | None = None
    shares: str | None = None  # the score whose fit (state and params) this one reuses
    diagnostics: Callable[[Any], Mapping[str, float]] | None = None
    served: bool = True
    pack: Callable[[Any], Mapping[str, Tensor]] | None = None  # state -> tensors (torch.save, weights_only)
    unpack: Callable[[Mapping[str, Tensor]], Any] | None = None

    @property
    def fit_key(self) -> str | None:
        """Where this score's fitted state lives in ScoreFit.state (None: it needs no fit)."""
        return self.shares or (self.name if self.fit is not None else None)

    @property
    def reads(self) -> tuple[str, ...]:
        """Every feature space the score reads."""
        return (self.space, "logits") if self.logits and self.space != "logits" else (self.space,)

    def __call__(self, inputs: ScoreInputs, fitted: Fitted) -> Tensor:
        return self.fn(inputs, fitted)


SCORES: dict[str, Score] = {}


def register_score(name: str, *, space: str, logits: bool = False, params: Any = None, fit: FitHook | None = None,
                   shares: str | None = None, diagnostics: Callable | None = None, served: bool = True,
                   pack: Callable | None = None, unpack: Callable | None = None) -> Callable:
    """Decorator: add `fn(inputs: ScoreInputs, fitted: Fitted) -> Tensor (N,)` to SCORES under `name`."""
    def deco(fn: Callable[[ScoreInputs, Fitted], Tensor]) -> Callable:
        if name in SCORES:
            raise ValueError(f"score {name!r} is already registered")
        if "/" in name or name in keys.NAMESPACES:
            raise ValueError(f"score name {name!r} must not contain '/' or be one of {keys.NAMESPACES}")
        if space not in SPACES:
            raise ValueError(f"score {name!r}: space must be one of {SPACES}, got {space!r}")
        if params is not None and not (dataclasses.is_dataclass(params) and not isinstance(params, type)):
            raise TypeError(f"score {name!r}: params must be a dataclass instance (the defaults), got {params!r}")
        if shares is not None and (shares not in SCORES or SCORES[shares].fit is None or fit or params):
            raise ValueError(f"score {name!r} shares the fit of {shares!r}, which must be registered first with a "
                             "fit; a sharing score has no fit or params of its own")
        SCORES[name] = Score(name, fn, space, logits, params, fit, shares, diagnostics, served, pack, unpack)
        return fn
    return deco


def _names(scores: Iterable[str] | None) -> tuple[str, ...]:
    names = tuple(SCORES) if scores is None else tuple(scores)
    unknown = [s for s in names if s not in SCORES]
    if unknown:
        raise KeyError(f"unknown scores {unknown}; registered: {list(SCORES)}")
    return names


def served_scores() -> tuple[str, ...]:
    """The scores the MLflow scorer computes, in registry order."""
    return tuple(n for n, s in SCORES.items() if s.served)


def resolve_params(names: Iterable[str], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """{fit owner or score: params instance} with overrides ({name: dataclass instance | {field: value}}) applied."""
    overrides = dict(overrides or {})
    out = {}
    for n in names:
        owner = SCORES[SCORES[n].shares or n]
        if owner.params is not None:
            out[owner.name] = owner.params
    for n, value in overrides.items():
        if n not in SCORES or SCORES[n].params is None:
            have = [s for s, sc in SCORES.items() if sc.params is not None]
            raise KeyError(f"params given for {n!r}, which has no hyperparameters; scores with params: {have}")
        default = SCORES[n].params
        if isinstance(value, type(default)):
            out[n] = value
            continue
        known = {f.name for f in dataclasses.fields(default)}
        bad = sorted(set(value) - known)
        if bad:
            raise KeyError(f"score {n!r} has no params {bad}; its params: {sorted(known)}")
        out[n] = dataclasses.replace(default, **value)  # the dataclass's __post_init__ validates the values
    return out


def score_params(scores: Iterable[str] | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{score/<name>/<field>: value}: every hyperparameter of `scores` (default: all) and the space each reads,
    as flat MLflow params (ncood.tracking logs them with the TrialConfig of every trial run)."""
    names = _names(scores)
    resolved = resolve_params(names, overrides)
    out: dict[str, Any] = {keys.score_param_key(n, "space"): "+".join(SCORES[n].reads) for n in names}
    for n, p in resolved.items():
        out.update({keys.score_param_key(n, k): v for k, v in dataclasses.asdict(p).items()})
    return out


@dataclass(frozen=True)
class ScoreFit:
    """The fitted state of a set of scores: states by fit key, params by owner, the classifier head."""

    scores: tuple[str, ...]  # the scores this fit serves (compute_scores' default)
    state: Mapping[str, Any] = field(default_factory=dict)  # {fit key: state}, e.g. {"gmm": ClassGaussians}
    params: Mapping[str, Any] = field(default_factory=dict)  # {score: params instance}
    head: Head | None = None

    @property
    def gaussians(self) -> ClassGaussians:
        if "gmm" not in self.state:
            raise KeyError("the gmm score was not fitted (fit_scores(..., scores=...) left it out)")
        return self.state["gmm"]

    def fitted(self, name: str) -> Fitted:
        """What score `name` reads from this fit."""
        sc = SCORES[name]
        key = sc.fit_key
        if key is not None and key not in self.state:
            raise KeyError(f"score {name!r} needs the fit {key!r}, which this ScoreFit lacks (fitted: "
                           f"{sorted(self.state)})")
        owner = sc.shares or name
        params = self.params.get(owner, SCORES[owner].params)
        return Fitted(None if key is None else self.state[key], params, self.head)


def fit_scores(train: ScoreInputs, labels: Tensor, *, num_classes: int | None = None, head: Head | None = None,
               scores: Iterable[str] | None = None, params: Mapping[str, Any] | None = None) -> ScoreFit:
    """Run each fit hook the requested scores (default: all registered) need, once, on the train-set inputs.

    train: the train set's raw features, logits and classifier input (ScoreInputs); labels (N,) in [0, C);
    head: the classifier (ReAct, ASH, ViM need it); params: {score: {field: value} or params instance}.
    """
    names = _names(scores)
    labels = labels.to(train.features.device).long()
    c = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    resolved = resolve_params(names, params)
    data = FitData(train, labels, c, head)
    state: dict[str, Any] = {}
    for n in names:
        key = SCORES[n].fit_key
        if key is not None and key not in state:
            owner = SCORES[key]
            state[key] = owner.fit(data, resolved.get(key, owner.params))
    return ScoreFit(names, state, resolved, head)


def compute_scores(inputs: ScoreInputs, fit: ScoreFit, scores: Iterable[str] | None = None) -> dict[str, Tensor]:
    """{score name: (N,) float64} for `scores` (default: those `fit` was fitted for). Non-finite -> ValueError."""
    names = fit.scores if scores is None else _names(scores)
    n = len(inputs)
    if inputs.logits is not None and inputs.logits.shape[0] != n:
        raise ValueError(f"features ({n} rows) and logits ({inputs.logits.shape[0]} rows) must describe the same "
                         "images")
    inputs = dataclasses.replace(inputs)  # a fresh `shared` memo: its float64 copies live for this call only
    out = {}
    for name in names:
        s = SCORES[name](inputs, fit.fitted(name)).double()
        if s.shape != (n,):
            raise ValueError(f"score {name!r} returned shape {tuple(s.shape)}, expected ({n},)")
        out[name] = s
    # One finiteness check for all scores (S ops fewer per call: the served scorer scores one image per request);
    # the per-score count runs only when it fires.
    if out and not bool(torch.isfinite(torch.stack(list(out.values()))).all()):
        for name, s in out.items():
            bad = int((~torch.isfinite(s)).sum())
            if bad:
                raise ValueError(f"score {name!r}: {bad} of {n} values are non-finite (never dropped silently)")
    return out


def fit_diagnostics(fit: ScoreFit) -> dict[str, float]:
    """{<fit key>/<name>: float}: what each fit chose (keys.fit_key), e.g. gmm/jitter, vim/alpha."""
    out = {}
    for key, state in fit.state.items():
        diag = SCORES[key].diagnostics
        if diag is not None:
            out.update({keys.fit_key(key, k): float(v) for k, v in diag(state).items()})
    return out


def pack_states(fit: ScoreFit, scores: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, dict[str, Tensor]]:
    """{fit key: {name: CPU tensor}} of the fits `scores` need (minus `exclude`): what torch.save writes."""
    out = {}
    for n in _names(scores):
        key = SCORES[n].fit_key
        if key is None or key in out or key in exclude:
            continue
        state, owner = fit.state[key], SCORES[key]
        packed = owner.pack(state) if owner.pack else state
        out[key] = {k: torch.as_tensor(v).detach().to("cpu") for k, v in packed.items()}
    return out


def unpack_states(packed: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Any]:
    """Inverse of pack_states: {fit key: state}."""
    unknown = [k for k in packed if k not in SCORES]
    if unknown:
        raise KeyError(f"saved score states {unknown} are not registered scores in this ncood")
    return {k: SCORES[k].unpack(v) if SCORES[k].unpack else dict(v) for k, v in packed.items()}
