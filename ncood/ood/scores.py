"""The OoD score registry: every per-image score, higher = more in-distribution (REFERENCE.md sec. 5).

    gmm           logsumexp_c log N(z; mu_c, Sigma_c) under the DDU class Gaussians (Mukhoti et al. 2023),
                  fitted and evaluated in the run's feature space (below)
    feature_norm  ||z||_2 of the PRE-normalization features (TMLR 2024 L2 feature-norm paper, Sec. 3)
    msp           max_c softmax(logits)_c                 (Hendrycks & Gimpel 2017)
    max_logit     max_c logits_c                          (Hendrycks et al. 2022)
    energy        logsumexp_c logits_c, i.e. -E(x) at T=1 (Liu et al. 2020)
    logit_norm    ||logits||_2                            (TMLR 2024, Table 2 baseline)
    neco          ||P z|| / ||z||, P the projection on the top-C principal directions of the ID train
                  features (NECO, Ammar et al. ICLR 2024: under NC, ID features live in the class-mean span)
    neco_maxlogit neco * max_c logits_c                    (NECO's variant for models with a bias)

Feature space: `fit_scores(..., feature_space=...)` fixes where fitted scores live. "l2": the features the
classifier of an L2 model sees, z / max(||z||, 1e-12) (the seed paper normalizes at fit and at test time);
"raw": z as the encoder returns it. ScoreInputs always carries the raw z; `ScoreFit.project` maps it.

A new score is one decorated function `fn(inputs, fit) -> (N,)`; if it needs fitted state (NECO's PCA,
say) it passes `fit=hook` to `register_score`, the hook's return value is stored under the score's name in
`ScoreFit.state` and the score reads it back from there. No other score or table changes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ncood.ood.gaussian import ClassGaussians, fit_class_gaussians

__all__ = ["SCORES", "Score", "ScoreInputs", "ScoreFit", "FeatureSpace", "register_score", "fit_scores",
           "compute_scores", "to_feature_space"]

FeatureSpace = Literal["raw", "l2"]
FEATURE_SPACES: tuple[str, ...] = ("raw", "l2")


def to_feature_space(features: Tensor, feature_space: FeatureSpace) -> Tensor:
    """(N, d) raw features -> the same features in `feature_space` (the L2 model's normalization, eps 1e-12)."""
    if feature_space == "raw":
        return features
    if feature_space == "l2":
        return F.normalize(features, dim=1, eps=1e-12)  # z / max(||z||, eps), as in the model
    raise ValueError(f"feature_space must be one of {FEATURE_SPACES}, got {feature_space!r}")


@dataclass(frozen=True)
class ScoreInputs:
    """What one feature pass gives for an image set: raw (pre-normalization) features and logits."""

    features: Tensor  # (N, d) float32, pre-normalization z
    logits: Tensor | None  # (N, C); None only when fitting scores that need no logits


@dataclass(frozen=True)
class ScoreFit:
    """Fitted state of the scores: the feature space plus each fitted score's state under its name."""

    feature_space: FeatureSpace
    state: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"gmm": ClassGaussians}
    scores: tuple[str, ...] = ()  # the scores this fit serves (compute_scores' default)

    @property
    def gaussians(self) -> ClassGaussians:
        if "gmm" not in self.state:
            raise KeyError("the gmm score was not fitted (fit_scores(..., scores=...) left it out)")
        return self.state["gmm"]

    def project(self, features: Tensor) -> Tensor:
        return to_feature_space(features, self.feature_space)


FitHook = Callable[[ScoreInputs, Tensor, FeatureSpace, "int | None"], Any]


@dataclass(frozen=True)
class Score:
    name: str
    fn: Callable[[ScoreInputs, ScoreFit], Tensor]
    fit: FitHook | None = None  # (train inputs, train labels, feature space, num_classes) -> state

    def __call__(self, inputs: ScoreInputs, fit: ScoreFit) -> Tensor:
        return self.fn(inputs, fit)


SCORES: dict[str, Score] = {}


def register_score(name: str, *, fit: FitHook | None = None) -> Callable:
    """Decorator: add `fn(inputs: ScoreInputs, fit: ScoreFit) -> Tensor (N,)` to SCORES under `name`."""
    def deco(fn: Callable[[ScoreInputs, ScoreFit], Tensor]) -> Callable:
        if name in SCORES:
            raise ValueError(f"score {name!r} is already registered")
        SCORES[name] = Score(name, fn, fit)
        return fn
    return deco


def _names(scores: Iterable[str] | None) -> tuple[str, ...]:
    names = tuple(SCORES) if scores is None else tuple(scores)
    unknown = [s for s in names if s not in SCORES]
    if unknown:
        raise KeyError(f"unknown scores {unknown}; registered: {sorted(SCORES)}")
    return names


def fit_scores(train_features: Tensor, train_labels: Tensor, *, feature_space: FeatureSpace,
               train_logits: Tensor | None = None, scores: Iterable[str] | None = None,
               num_classes: int | None = None) -> ScoreFit:
    """Run the fit hook of every requested score (default: all registered) on the train-set features.

    train_features (N, d) are the RAW encoder features; each hook projects them to `feature_space` itself
    (via to_feature_space) if it needs to. feature_space is "l2" for the L2 models (GMM on normalized
    features, as the 2023 paper does) and "raw" otherwise.
    """
    to_feature_space(train_features[:1], feature_space)  # validates the name early
    names = _names(scores)
    train = ScoreInputs(train_features, train_logits)
    state = {n: SCORES[n].fit(train, train_labels, feature_space, num_classes) for n in names if SCORES[n].fit}
    return ScoreFit(feature_space, state, names)


def compute_scores(inputs: ScoreInputs, fit: ScoreFit, scores: Iterable[str] | None = None) -> dict[str, Tensor]:
    """{score name: (N,) float64} for `scores` (default: those `fit` was fitted for). Non-finite -> ValueError."""
    names = fit.scores if scores is None else _names(scores)
    n = inputs.features.shape[0]
    if inputs.logits is None or inputs.logits.shape[0] != n:
        raise ValueError("compute_scores needs features (N, d) and logits (N, C) for the same N images")
    out = {}
    for name in names:
        s = SCORES[name](inputs, fit).double()
        if s.shape != (n,):
            raise ValueError(f"score {name!r} returned shape {tuple(s.shape)}, expected ({n},)")
        bad = int((~torch.isfinite(s)).sum())
        if bad:
            raise ValueError(f"score {name!r}: {bad} of {n} values are non-finite (never dropped silently)")
        out[name] = s
    return out


# ---- the scores ------------------------------------------------------------------------------------------

def _fit_gmm(train: ScoreInputs, labels: Tensor, feature_space: FeatureSpace, num_classes: int | None):
    return fit_class_gaussians(to_feature_space(train.features, feature_space), labels, num_classes)


@register_score("gmm", fit=_fit_gmm)
def gmm(inputs: ScoreInputs, fit: ScoreFit) -> Tensor:
    return fit.gaussians.log_density(fit.project(inputs.features))  # (N,) float64


@register_score("feature_norm")
def feature_norm(inputs: ScoreInputs, fit: ScoreFit) -> Tensor:
    return inputs.features.double().norm(dim=1)  # raw z whatever the feature space: the TMLR 2024 score


@register_score("msp")
def msp(inputs: ScoreInputs, fit: ScoreFit) -> Tensor:
    return torch.softmax(inputs.logits.double(), dim=1).amax(dim=1)  # float64: fewer ties at ~1.0


@register_score("max_logit")
def max_logit(inputs: ScoreInputs, fit: ScoreFit) -> Tensor:
    return inputs.logits.double().amax(dim=1)


@register_score("energy")
def energy(inputs: ScoreInputs, fit: ScoreFit) -> Tensor:
    return torch.logsumexp(inputs.logits.double(), dim=1)


@register_score("logit_norm")
def logit_norm(inputs: ScoreInputs, fit: ScoreFit) -> Tensor:
    return inputs.logits.double().norm(dim=1)


# ---- NECO (Ammar et al., "NECO: NEural Collapse Based Out-of-distribution detection", ICLR 2024) --------------------
def _fit_neco(train: ScoreInputs, labels: Tensor, feature_space: FeatureSpace, num_classes: int | None) -> Tensor:
    """(d, k) orthonormal principal directions of the train features (in the run's feature space), k = C.

    PCA on the centred features (as sklearn's PCA in the NECO code); k = number of classes: under neural
    collapse the class means span C-1 dimensions (NECO tunes k per model; C is the NC-motivated choice).
    """
    h = to_feature_space(train.features, feature_space).double()  # (N, d)
    k = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    _, _, vh = torch.linalg.svd(h - h.mean(dim=0), full_matrices=False)  # vh (min(N, d), d)
    return vh[: min(k, vh.shape[0])].T.contiguous()  # (d, k)


@register_score("neco", fit=_fit_neco)
def neco(inputs: ScoreInputs, fit: ScoreFit) -> Tensor:
    """||P z|| / ||z|| with P = V V^T (V from _fit_neco); z uncentred, so the ratio is in [0, 1]."""
    z = fit.project(inputs.features).double()  # (N, d)
    v = fit.state["neco"].to(z.device)  # (d, k)
    return (z @ v).norm(dim=1) / z.norm(dim=1).clamp_min(1e-12)


@register_score("neco_maxlogit", fit=_fit_neco)
def neco_maxlogit(inputs: ScoreInputs, fit: ScoreFit) -> Tensor:
    v = fit.state["neco_maxlogit"].to(inputs.features.device)
    z = fit.project(inputs.features).double()
    return (z @ v).norm(dim=1) / z.norm(dim=1).clamp_min(1e-12) * inputs.logits.double().amax(dim=1)
