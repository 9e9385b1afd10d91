"""The scores on logits or needing only the DDU fit, in the one registry (ncood.ood.scores; the post-hoc detectors are in
ncood/ood/posthoc.py):

    gmm           logsumexp_c log N(x; mu_c, Sigma_c), x the classifier input, under the DDU class Gaussians
                  (Mukhoti et al., "Deep Deterministic Uncertainty", CVPR 2023, Sec. 4); for L2 models on the
                  normalized features, as TMLR 2024 Sec. 2.2 describes the seed paper's method ("density estimation
                  over L2-normed feature space ... requires L2 normalization at test time as well as at training")
    feature_norm  ||z||_2 of the PRE-normalization features (TMLR 2024 "Exploring Simple, High Quality OoD
                  Detection with L2 Normalization", Sec. 2.1: "the L2 norm of each image's unnormalized feature
                  vector z")
    msp           max_c softmax(logits)_c                 (Hendrycks & Gimpel, ICLR 2017)
    max_logit     max_c logits_c                          (Hendrycks et al., ICML 2022)
    energy        logsumexp_c logits_c, i.e. -E(x) at T=1 (Liu et al., NeurIPS 2020)
    logit_norm    ||logits||_2
    raw_max_logit, raw_logit_norm
                  max_c and ||.||_2 of W z + b: the classifier applied to the raw z, i.e. with the normalization
                  "turned off at test time" (TMLR 2024 App. A.2, said of softmax measurements). ncood's reading of
                  its Table 3 ("MaxLogit", "Norm - Logits", ResNet18 L2 60, beside feature_norm), whose logit
                  figures track the feature norm's; the paper does not state how Table 3 computed them. For a model without L2 they equal
                  max_logit and logit_norm; for an L2 model the logits of max_logit are W z/||z|| + b, which carry
                  none of ||z||. Not served: analysis measurements, which TMLR found no better than feature_norm.
                  ICML 2025 ETF-projector models: W z skips the projector too (no paper defines this case).

These are one-liners in float64, written here rather than taken from pytorch-ood (whose EnergyBased, MaxSoftmax
and MaxLogit compute the same numbers with the opposite sign): nothing to get wrong, and no device round trip.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ncood.ood.gaussian import ClassGaussians, fit_class_gaussians
from ncood.ood.scores import FitData, Fitted, ScoreInputs, register_score


def _fit_gmm(data: FitData, params: None) -> ClassGaussians:
    return fit_class_gaussians(data.train.space("input"), data.labels, data.num_classes)


def _gmm_diagnostics(g: ClassGaussians) -> dict[str, float]:
    """The jitter DDU's ladder chose and the worst class's count of zero-variance dims (keys.GMM_DEGENERATE_DIMS)."""
    worst = float(g.degenerate_dims.max()) if g.degenerate_dims is not None else 0.0
    return {"jitter": g.jitter, "degenerate_dims": worst}


@register_score("gmm", space="input", fit=_fit_gmm, diagnostics=_gmm_diagnostics,
                pack=ClassGaussians.state_dict, unpack=ClassGaussians.from_state_dict)
def gmm(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return fitted.state.log_density(inputs.space("input"))  # (N,) float64


@register_score("feature_norm", space="raw")
def feature_norm(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return inputs.space64("raw").norm(dim=1)  # raw z whatever the model: the TMLR 2024 score


@register_score("msp", space="logits")
def msp(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return torch.softmax(inputs.space64("logits"), dim=1).amax(dim=1)  # float64: fewer ties at ~1.0


@register_score("max_logit", space="logits")
def max_logit(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return inputs.space64("logits").amax(dim=1)


@register_score("energy", space="logits")
def energy(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return torch.logsumexp(inputs.space64("logits"), dim=1)


@register_score("logit_norm", space="logits")
def logit_norm(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return inputs.space64("logits").norm(dim=1)


def _raw_logits(inputs: ScoreInputs, fitted: Fitted, score: str) -> Tensor:
    """(N, C) float64 W z + b: the classifier on the raw features z (normalization off, TMLR 2024 App. A.2), made
    once per inputs for raw_max_logit and raw_logit_norm."""
    head = fitted.need_head(score)
    z = inputs.space64("raw")
    if z.shape[1] != head.weight.shape[1]:
        raise ValueError(f"score {score!r} applies the classifier to the raw features, but they have {z.shape[1]} "
                         f"dimensions and the classifier takes {head.weight.shape[1]}")
    return inputs.shared("raw_logits", lambda: head(z), of=head)


@register_score("raw_max_logit", space="raw", served=False)
def raw_max_logit(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return _raw_logits(inputs, fitted, "raw_max_logit").amax(dim=1)


@register_score("raw_logit_norm", space="raw", served=False)
def raw_logit_norm(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return _raw_logits(inputs, fitted, "raw_logit_norm").norm(dim=1)
