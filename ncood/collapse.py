"""Neural Collapse (NC) metrics and the differentiable NC loss.

Definitions follow Papyan, Han & Donoho (2020) as restated in the seed paper (early NC with L2 feature
normalization, Sec. 3.2, Eqs. 3-8) and the DNC slides (Eqs. 1-5, 15, 19); docs/method.md#nc-metrics fixes
the conventions used here. With h_i the features, y_i the labels, C classes and N samples:

    mu_c = mean of class c,  mu_G = mean_c mu_c  (mean of class means, not of samples),
    M = [mu_c - mu_G]_c                       (d, C) centred class means, columns sum to zero
    Sigma_W = sum_i (h_i - mu_y_i)(h_i - mu_y_i)^T / N,   Sigma_B = M M^T / C
    nc1 = Tr(Sigma_W Sigma_B^+) / C           WE DIVIDE BY C (the seed paper's Eq. 3 and the slides' Eq. 5
                                              do; Papyan's public notebook omits the /C)
    nc2_equinorm_{means,classifier} = std_c ||v_c|| / mean_c ||v_c||   (v = columns of M, rows of W;
                                              std with Bessel's correction, as torch.std in Papyan's code)
    nc2_equiangular_{means,classifier} = sum_{c != c'} |cos(v_c, v_c') + 1/(C-1)| / (C (C-1))
    nc2_etf_distance = || G / ||G||_F - (I - 11^T/C) / sqrt(C-1) ||_F,  G = M̂^T M̂   (slides Eqs. 14-15)
                       with M̂ the centred means scaled to unit length (slides Eq. 14), so only their angles count
    nc3_self_duality = || W^T / ||W||_F - M / ||M||_F ||_F^2                       (paper Eq. 7)
    nc4_ncc_error    = mean_i [argmin_c ||h_i - mu_c|| != y_i]                      (paper Sec. 3.2, Eq. 8)
    nc4_ncc_mismatch = mean_i [argmin_c ||h_i - mu_c|| != prediction_i]            (slides Eq. 19)

NC4 two ways: the seed paper words it as "the proportion of training set samples that are misclassified when a
simple decision rule based on the distance ... to the nearest class is used" (Sec. 3.2): the nearest-class-mean rule
against the labels, which its Table 3 reports. Papyan et al. and the DNC slides measure the rule's disagreement
with the network's own argmax. Both are logged; on a network that fits its training set they coincide.

NC1 without a d x d pseudo-inverse: Sigma_B has rank r <= min(d, C-1). With the thin SVD M = U S V^T
(U: (d, r)), Sigma_B^+ = C U S^-2 U^T, so nc1 = Tr(U^T Sigma_W U S^-2) = sum_k ||P_k||^2 / (N s_k^2) where
P = (h_i - mu_y_i) U is the (N, r) projection of the centred features. Cost O(N d r); Sigma_W is never
formed. Singular values below max(d, C) * eps * s_max are treated as zero (numpy/torch pinv tolerance).

The loss (the NC intervention, seed paper Sec. 4) avoids the SVD, whose backward has 1/(s_i^2 - s_j^2)
terms that explode when singular values are close (as they are near an ETF). Instead, with
G = M^T M + (tr(M^T M)/C^2) 11^T (+ ridge), which is invertible because M 1 = 0 moves the null direction 1
to a positive eigenvalue, Tr(Sigma_W Sigma_B^+) / C = Tr(M^T Sigma_W M G^-2) exactly (the 11^T part of
G^-2 meets M^T Sigma_W M only through 1^T M^T = 0). With B = (h_i - mu_y_i)^T M, (N, C), this is
||G^-1 B^T||_F^2 / N: one C x C solve, smooth gradients, no pseudo-inverse.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["nc_metrics", "nc_loss"]

_CPU_BLOCK_ELEMENTS = 2**18  # float64 elements of one row block in nc_metrics on a CPU (2 MiB: stays in cache)


def _check_inputs(features: Tensor, labels: Tensor, classifier_weight: Tensor) -> tuple[int, Tensor]:
    """Shape checks; returns (C, per-class counts (C,) int64). Raises ValueError for classes absent from labels."""
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"expected features (N, d) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    if classifier_weight.ndim != 2 or classifier_weight.shape[1] != features.shape[1]:
        raise ValueError(f"classifier_weight must be (C, d={features.shape[1]}), got {tuple(classifier_weight.shape)}")
    num_classes = classifier_weight.shape[0]
    if features.shape[0] == 0:
        raise ValueError("NC metrics need at least one sample")
    if num_classes < 2:
        raise ValueError(f"NC metrics need at least 2 classes, got {num_classes}")
    labels = labels.long()
    lo, hi = int(labels.min()), int(labels.max())  # one host sync; labels out of range would corrupt index_add_
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), found range [{lo}, {hi}]")
    counts = torch.bincount(labels, minlength=num_classes)  # (C,) int64
    return num_classes, counts


def _class_means(h: Tensor, labels: Tensor, counts: Tensor) -> Tensor:
    """(N, d), (N,), (C,) -> (C, d) class means, in h's dtype."""
    sums = torch.zeros(counts.shape[0], h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, labels, h)
    return sums / counts.to(h.dtype).unsqueeze(1)


def _equinorm(v: Tensor) -> Tensor:
    """(C, d) -> coefficient of variation of the row norms (std with Bessel's correction)."""
    norms = v.norm(dim=1)
    return norms.std() / norms.mean()


def _equiangular(v: Tensor) -> Tensor:
    """(C, d) -> mean over ordered pairs c != c' of |cos(v_c, v_c') + 1/(C-1)|."""
    c = v.shape[0]
    u = torch.nn.functional.normalize(v, dim=1)
    off = ~torch.eye(c, dtype=torch.bool, device=v.device)
    return (u @ u.T + 1.0 / (c - 1))[off].abs().sum() / (c * (c - 1))


def _etf_distance(m: Tensor) -> Tensor:
    """(C, d) centred means (rows) -> || G/||G||_F - (I - 11^T/C)/sqrt(C-1) ||_F with G the (C, C) Gram matrix of the
    means scaled to unit length: the DNC slides' Eq. 14 normalizes each mu_c - mu_G before Eq. 15 compares."""
    c = m.shape[0]
    u = torch.nn.functional.normalize(m, dim=1)  # (C, d) unit rows (slides Eq. 14)
    gram = u @ u.T  # (C, C)
    target = (torch.eye(c, dtype=m.dtype, device=m.device) - 1.0 / c) / math.sqrt(c - 1)
    return (gram / gram.norm() - target).norm()


def _self_duality(w: Tensor, m: Tensor) -> Tensor:
    """(C, d) classifier rows, (C, d) centred means -> || W^T/||W||_F - M/||M||_F ||_F^2."""
    return (w / w.norm() - m / m.norm()).pow(2).sum()


@torch.no_grad()
def nc_metrics(features: Tensor, labels: Tensor, classifier_weight: Tensor,
               predictions: Tensor | None = None) -> dict[str, float]:
    """NC1-NC4 of a feature set (module docstring for formulas). Computed in float64 on the inputs' device.

    features (N, d), labels (N,) in [0, C), classifier_weight (C, d); predictions (N,) the network's argmax,
    optional: nc4_ncc_mismatch is returned only when it is given (nc4_ncc_error always). Every class 0..C-1 must be present
    (ValueError otherwise). Returns python floats keyed as ncood.keys.NC_METRICS.

    Degenerate cases: zero within-class spread gives nc1 = 0 (0 * finite); if all class means coincide
    (M = 0) every metric normalized by ||M|| is undefined and comes back NaN.
    """
    num_classes, counts = _check_inputs(features, labels, classifier_weight)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} have no samples; NC metrics need every one of the {num_classes} classes")
    labels = labels.long()
    if predictions is not None and predictions.shape != labels.shape:
        raise ValueError(f"predictions must be (N,)={tuple(labels.shape)}, got {tuple(predictions.shape)}")
    w = classifier_weight.detach().double()  # (C, d)
    n, d = features.shape
    # Two passes over the features in row blocks widened to float64 one at a time (Sigma_W / Sigma_B ratios need
    # the precision): no (N, d) float64 copy is ever made, which on a CPU is most of the cost (memory traffic).
    rows = n if features.device.type == "cuda" else max(1, _CPU_BLOCK_ELEMENTS // d)
    blocks = [(i, min(i + rows, n)) for i in range(0, n, rows)]

    sums = torch.zeros(num_classes, d, dtype=torch.float64, device=features.device)
    for a, b in blocks:
        sums.index_add_(0, labels[a:b], features[a:b].double())
    means = sums / counts.to(torch.float64).unsqueeze(1)  # (C, d) uncentred, for NC4
    m = means - means.mean(dim=0)  # (C, d) rows = columns of M

    # NC1 in the span of M: thin SVD of M (d, C) == m.T; Vh unused.
    u, s, _ = torch.linalg.svd(m.T, full_matrices=False)  # u (d, C), s (C,) descending
    tol = max(m.shape) * torch.finfo(torch.float64).eps * s[0]
    keep = s > tol  # rank r <= min(d, C-1); s[-1] ~ 0 because columns of M sum to zero
    u = u[:, keep]  # (d, r)
    proj_sq = torch.zeros(u.shape[1], dtype=torch.float64, device=features.device)  # (r,) sum_i ((h_i - mu_y_i) U)^2
    ncc = []  # NC4: argmin_c ||h - mu_c||^2 = argmin_c (||mu_c||^2 - 2 h.mu_c)
    mean_sq = means.pow(2).sum(dim=1)  # (C,)
    for a, b in blocks:
        h = features[a:b].double()  # (B, d)
        ncc.append((mean_sq - 2.0 * h @ means.T).argmin(dim=1))  # (B,)
        proj_sq += ((h - means[labels[a:b]]) @ u).pow(2).sum(dim=0)  # centred rows projected on the span of M
    if u.shape[1] > 0:
        nc1 = (proj_sq / s[keep].pow(2)).sum() / n  # Tr(U^T Sigma_W U S^-2) = Tr(Sigma_W Sigma_B^+)/C
    else:
        nc1 = torch.tensor(float("nan"), dtype=torch.float64)  # all class means equal: NC1 undefined

    out = {
        "nc1": nc1,
        "nc2_equinorm_means": _equinorm(m),
        "nc2_equinorm_classifier": _equinorm(w),
        "nc2_equiangular_means": _equiangular(m),
        "nc2_equiangular_classifier": _equiangular(w),
        "nc2_etf_distance": _etf_distance(m),
        "nc3_self_duality": _self_duality(w, m),
    }
    ncc = torch.cat(ncc)  # (N,) nearest class mean, from the blocks above
    out["nc4_ncc_error"] = (ncc != labels).double().mean()
    if predictions is not None:
        out["nc4_ncc_mismatch"] = (ncc != predictions.to(ncc.device).long()).double().mean()
    return {k: float(v) for k, v in out.items()}  # one host transfer per scalar, nothing large leaves the device


def nc_loss(features: Tensor, labels: Tensor, classifier_weight: Tensor, *, ridge: float = 1e-6) -> Tensor:
    """NC intervention loss on batch statistics (seed paper Sec. 4), differentiable, in the input dtype:

        NC1 + EN_means + EN_classifier + EA_means + EA_classifier + NC3

    NC1 is solved in the span of M (module docstring: ||G^-1 B^T||_F^2 / N with G = M^T M + 11^T tr/C^2),
    plus ridge * tr(M^T M)/(C-1) * I on G, a relative ridge that keeps the C x C solve well posed when
    class means are (nearly) linearly dependent, e.g. d < C-1; it biases NC1 down by about a relative
    ridge where the means are well spread. The coefficients of variation use sqrt(cv^2 + 1e-12) so the
    gradient stays bounded at exact equinormality (value ~1e-6 there instead of 0).

    Classes absent from the batch are left out (statistics over the classes present, W restricted to
    their rows); at least two classes must be present. Returns a scalar tensor. Autocast is switched off
    inside: float32/float64 inputs are used as they are, half/bfloat16 ones are promoted to float32.
    """
    dtype = torch.promote_types(features.dtype, torch.float32)
    with torch.autocast(device_type=features.device.type, enabled=False):
        return _nc_loss(features.to(dtype), labels, classifier_weight.to(dtype), ridge)


def _nc_loss(features: Tensor, labels: Tensor, classifier_weight: Tensor, ridge: float) -> Tensor:
    _, counts = _check_inputs(features, labels, classifier_weight)
    labels = labels.long()
    present = counts > 0
    w = classifier_weight
    if not bool(present.all()):  # host sync once per step; rare (CIFAR-100 at batch 2048)
        idx = torch.nonzero(present).flatten()
        if idx.numel() < 2:
            raise ValueError("nc_loss needs at least two classes in the batch")
        remap = torch.full_like(counts, -1)
        remap[idx] = torch.arange(idx.numel(), device=idx.device)
        labels, counts, w = remap[labels], counts[idx], classifier_weight[idx]
    h = features
    c, n = counts.shape[0], h.shape[0]

    means = _class_means(h, labels, counts)  # (C, d)
    m = means - means.mean(dim=0)  # (C, d)
    gram = m @ m.T  # (C, C) M^T M
    tr = gram.diagonal().sum()
    eye = torch.eye(c, dtype=h.dtype, device=h.device)
    g = gram + tr / c**2 + ridge * tr / (c - 1) * eye  # 11^T * tr/C^2 lifts the null direction 1
    b = (h - means[labels]) @ m.T  # (N, C) = (h_i - mu_y_i)^T M
    nc1 = torch.linalg.solve(g, b.T).pow(2).sum() / n

    def cv(v: Tensor) -> Tensor:  # smoothed coefficient of variation of row norms
        norms = v.norm(dim=1)
        return torch.sqrt(norms.var() / norms.mean().pow(2) + 1e-12)

    return nc1 + cv(m) + cv(w) + _equiangular(m) + _equiangular(w) + _self_duality(w, m)
