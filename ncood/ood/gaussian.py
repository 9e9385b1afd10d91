"""Class-conditional Gaussians of DDU (Mukhoti et al., "Deep Deterministic Uncertainty", CVPR 2023, Sec. 4).

One full-covariance Gaussian per class, fitted on the train-set features in float64 (REFERENCE.md sec. 5):

    mu_c = mean of class-c features,  Sigma_c = X_c^T X_c / (n_c - 1)  with X_c the centred class features
    log p(z) = logsumexp_c log N(z; mu_c, Sigma_c)          (DDU's score: no class priors, higher = more ID)
    log N(z; mu, Sigma) = -(d log 2pi + log det Sigma + ||L^-1 (z - mu)||^2) / 2,   Sigma = L L^T

Jitter (DDU's `centered_cov_torch` + jitter loop): Sigma_c + eps I for eps in [0, 1e-12, 1e-11, ..., 1e-1],
the same eps for every class, the first one for which the batched Cholesky of all C matrices succeeds.
The eps used is recorded (`jitter`) and must be logged: a class with fewer samples than dimensions is
singular by construction and then the jitter is a regularizer that changes the scores. DDU's own loop
matches an old torch error string and is broken on current torch; here `torch.linalg.cholesky_ex` reports
failure through its `info` tensor. If no eps works the fit raises, naming the classes and their counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["JITTERS", "ClassGaussians", "GaussianFitError", "fit_class_gaussians"]

JITTERS: tuple[float, ...] = (0.0,) + tuple(10.0**k for k in range(-12, 0))  # DDU's ladder: 0, 1e-12 ... 1e-1
_CHUNK_ELEMENTS = 2**25  # float64 elements of the (C, d, chunk) residual tensor: 256 MiB


class GaussianFitError(RuntimeError):
    """No jitter on the ladder makes every class covariance positive definite."""


@dataclass(frozen=True)
class ClassGaussians:
    """C Gaussians in d dimensions; all tensors float64 on one device."""

    means: Tensor  # (C, d)
    chol: Tensor  # (C, d, d) lower Cholesky factor of Sigma_c + jitter I
    counts: Tensor  # (C,) int64 training samples per class (diagnostics)
    jitter: float  # the eps * I added to every covariance (0.0 when none was needed)

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    def per_class_log_density(self, z: Tensor, chunk_size: int | None = None) -> Tensor:
        """(N, d) -> (N, C) float64 log N(z; mu_c, Sigma_c), chunked over N (default: ~256 MiB per chunk)."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected features (N, {self.dim}), got {tuple(z.shape)}")
        c, d = self.num_classes, self.dim
        chunk = chunk_size or max(1, _CHUNK_ELEMENTS // (c * d))
        log_det = 2.0 * self.chol.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)  # (C,)
        const = -0.5 * (d * math.log(2 * math.pi) + log_det)  # (C,)
        out = []
        for start in range(0, z.shape[0], chunk):
            zc = z[start:start + chunk].to(device=self.device, dtype=torch.float64)  # (n, d)
            # (C, d, n) z - mu_c, stored column-major (a transposed (C, n, d)): LAPACK's layout, so the solve
            # works on it without first copying it into a column-major buffer.
            resid = (zc.unsqueeze(0) - self.means.unsqueeze(1)).transpose(1, 2)
            y = torch.linalg.solve_triangular(self.chol, resid, upper=False)  # (C, d, n) L_c^-1 (z - mu_c)
            out.append((const.unsqueeze(1) - 0.5 * y.square_().sum(dim=1)).T)  # (n, C)
        return torch.cat(out) if out else torch.empty(0, c, dtype=torch.float64, device=self.device)

    def log_density(self, z: Tensor, chunk_size: int | None = None) -> Tensor:
        """(N, d) -> (N,) float64 logsumexp_c log N(z; mu_c, Sigma_c): the DDU score (higher = more ID)."""
        return torch.logsumexp(self.per_class_log_density(z, chunk_size), dim=1)

    def to(self, device: torch.device | str) -> ClassGaussians:
        return ClassGaussians(self.means.to(device), self.chol.to(device), self.counts.to(device), self.jitter)

    def state_dict(self) -> dict:
        return {"means": self.means, "chol": self.chol, "counts": self.counts, "jitter": self.jitter}

    @classmethod
    def from_state_dict(cls, state: dict) -> ClassGaussians:
        return cls(state["means"], state["chol"], state["counts"], float(state["jitter"]))

    def save(self, path: str | Path) -> None:
        """torch.save of {means, chol, counts, jitter} (CPU tensors, loadable with weights_only=True)."""
        torch.save(self.to("cpu").state_dict(), path)

    @classmethod
    def load(cls, path: str | Path, map_location: torch.device | str = "cpu") -> ClassGaussians:
        return cls.from_state_dict(torch.load(path, map_location=map_location, weights_only=True))


def _gram(x: Tensor, out: Tensor, min_block: int = 256) -> Tensor:
    """out (d, d) <- x^T x for x (n, d), computing each off-diagonal block once (a recursive SYRK).

    Split the columns in halves [A B]: x^T x = [[A^T A, A^T B], [B^T A, B^T B]], and B^T A = (A^T B)^T is a copy,
    not a product; the diagonal blocks recurse down to min_block columns. At d = 2048 this is 9/16 of the
    multiply-adds of one x.T @ x, in products still large enough for the BLAS to run at full speed.
    """
    d = x.shape[1]
    if d < 2 * min_block:
        return torch.mm(x.T, x, out=out)
    h = d // 2
    _gram(x[:, :h], out[:h, :h], min_block)
    _gram(x[:, h:], out[h:, h:], min_block)
    torch.mm(x[:, :h].T, x[:, h:], out=out[:h, h:])  # (h, d - h) A^T B
    out[h:, :h] = out[:h, h:].T
    return out


def fit_class_gaussians(features: Tensor, labels: Tensor, num_classes: int | None = None) -> ClassGaussians:
    """Fit the DDU class Gaussians on (N, d) features with (N,) labels in [0, C); float64 on the features' device.

    num_classes defaults to labels.max() + 1. Every class needs at least 2 samples (ValueError otherwise);
    non-finite features raise ValueError; GaussianFitError if no jitter on the ladder works.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features (N, d) and labels (N,), got {tuple(features.shape)}, {tuple(labels.shape)}")
    x = features  # (N, d) as given; each class's rows are widened to float64 below (no (N, d) float64 copy)
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).any(dim=1)
        raise ValueError(f"{int(bad.sum())} of {x.shape[0]} training feature rows are non-finite")
    labels = labels.to(x.device).long()
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= c:
        raise ValueError(f"labels must lie in [0, {c})")
    d = x.shape[1]
    counts = torch.bincount(labels, minlength=c)  # (C,)
    small = torch.nonzero(counts < 2).flatten().tolist()
    if small:
        raise ValueError(f"classes {small} have fewer than 2 samples ({counts[small].tolist()}); cannot fit a covariance")

    means = torch.empty(c, d, dtype=torch.float64, device=x.device)
    cov = torch.empty(c, d, d, dtype=torch.float64, device=x.device)
    for k in range(c):  # per class: (n_k, d) float64 rows, centred in place, one symmetric product
        xk = x[labels == k].double()  # float64: covariances of 512-2048-d features need it
        means[k] = xk.mean(dim=0)
        xk -= means[k]
        _gram(xk, out=cov[k]).div_(xk.shape[0] - 1)

    eye = torch.eye(d, dtype=torch.float64, device=x.device)
    for eps in JITTERS:
        chol, info = torch.linalg.cholesky_ex(cov + eps * eye)  # info (C,) int32: 0 = success
        if not bool(info.any()):
            return ClassGaussians(means, chol, counts, float(eps))
    failed = torch.nonzero(info).flatten().tolist()
    detail = ", ".join(f"class {k}: {int(counts[k])} samples" for k in failed)
    raise GaussianFitError(
        f"Cholesky failed for every jitter up to {JITTERS[-1]:g} in d={d} ({detail}; classes with fewer samples "
        "than dimensions are singular and rely on the jitter; huge feature scales defeat it)"
    )
