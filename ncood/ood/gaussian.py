"""Class-conditional Gaussians of DDU (Mukhoti et al., "Deep Deterministic Uncertainty", CVPR 2023, Sec. 4).

One full-covariance Gaussian per class, fitted on the train-set features in float64 (docs/method.md#gmm):

    mu_c = mean of class-c features,  Sigma_c = X_c^T X_c / (n_c - 1)  with X_c the centred class features
    log p(z) = logsumexp_c log N(z; mu_c, Sigma_c)          (DDU's score: no class priors, higher = more ID)
    log N(z; mu, Sigma) = -(d log 2pi + log det Sigma + ||L^-1 (z - mu)||^2) / 2,   Sigma = L L^T

Jitter: DDU's ladder (code `utils/gmm_utils.py`:5-6, `JITTERS = [0, DOUBLE_INFO.tiny] + [10 ** exp for exp in
range(-308, 0, 1)]` with `DOUBLE_INFO = torch.finfo(torch.double)`; its fit loop at :93-107): Sigma_c + eps I for eps
in 0, 2.2e-308 (finfo(float64).tiny, the smallest positive *normal* float64), 1e-308, 1e-307, ..., 1e-1 (310 rungs,
in DDU's order: tiny comes before the subnormal 1e-308), the same eps for every class, the first one for which the
batched Cholesky of all C matrices succeeds. A rung that leaves every diagonal entry bit-for-bit as the previous
attempt left it (eps below the float64 resolution of every variance) gives the identical matrix, hence the identical
(failed) Cholesky, and is skipped: the chosen eps is exactly DDU's. DDU's own loop matches an old torch error string
and is broken on current torch; here `torch.linalg.cholesky_ex` reports failure through its `info` tensor. If no
eps works the fit raises, naming the classes and their counts.

Degenerate fits are made visible, not hidden (the jitter then decides the scores): the eps used is recorded
(`jitter`), and so is, per class, the number of dimensions whose variance is numerically zero (`degenerate_dims`,
see `zero_variance_dims`). Plain-ReLU networks produce such dimensions (a channel that is 0 for a whole class);
a class with fewer samples than dimensions is singular without any. Warnings about them belong to the caller that
knows the trial (ncood.pipeline): this module only returns the facts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from ncood import checkpoint

__all__ = ["JITTERS", "PRUNE_NATS", "ClassGaussians", "GaussianFitError", "fit_class_gaussians", "zero_variance_dims"]

# DDU utils/gmm_utils.py:6, verbatim: 0, finfo(float64).tiny, then 1e-308, 1e-307, ..., 1e-1 (Python's 10 ** -308 is
# the float 1e-308, a subnormal below tiny).
JITTERS: tuple[float, ...] = (0.0, torch.finfo(torch.float64).tiny) + tuple(10 ** k for k in range(-308, 0))
_CHUNK_ELEMENTS = 2**25  # float64 elements of the (C, d, chunk) residual tensor: 256 MiB
PRUNE_NATS = 50.0  # log_density drops a class once its log density provably stays this far below the best one
# log_density solves every class directly when N * C * d^2 (the solves' multiply-adds) is at most this: below it the
# bound's fixed cost (~2C + 10 small ops) exceeds the solves it saves (1-thread CPU, C = 10: equal at d = 512, N = 1
# and at d = 64, N = 64; the served scorer's one-image request at d = 64 takes 1/4 of the bound path's time).
_DIRECT_WORK = 2**21


class GaussianFitError(RuntimeError):
    """No jitter on the ladder makes every class covariance positive definite."""


@dataclass(frozen=True)
class ClassGaussians:
    """C Gaussians in d dimensions; all tensors float64 on one device."""

    means: Tensor  # (C, d)
    chol: Tensor  # (C, d, d) lower Cholesky factor of Sigma_c + jitter I
    counts: Tensor  # (C,) int64 training samples per class (diagnostics)
    jitter: float  # the eps * I added to every covariance (0.0 when none was needed)
    degenerate_dims: Tensor | None = None  # (C,) int64 numerically zero-variance dims per class (zero_variance_dims)

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
        """(N, d) -> (N, C) float64 log N(z; mu_c, Sigma_c) for every class, chunked over N (~256 MiB per chunk)."""
        self._check(z)
        c, d = self.num_classes, self.dim
        chunk = chunk_size or max(1, _CHUNK_ELEMENTS // (c * d))
        const = self._log_const  # (C,)
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
        """(N, d) -> (N,) float64 logsumexp_c log N(z; mu_c, Sigma_c): the DDU score (higher = more ID).

        Equal to logsumexp of `per_class_log_density` to float64 rounding, at a fraction of its cost when the
        classes are apart (an exact bound, not an approximation). In class c's whitened space w = L_c^-1 (z - mu_c)
        the Mahalanobis distance is ||w||^2 >= ||Q_c^T w||^2 = ||V_c^T (z - mu_c)||^2 for any orthonormal Q_c
        (d, min(C-1, d)) and V_c = L_c^-T Q_c; Q_c spans the whitened mean differences L_c^-1 (mu_j - mu_c), the part of
        the distance that separates the classes. So const_c - ||V_c^T (z - mu_c)||^2 / 2 bounds log N_c(z) from
        above for all C classes in one (N, d) x (d, C (C-1)) product. Each point then gets in full the class with
        the best bound, whose exact log density l bounds the logsumexp from below, and in full every other class
        whose bound reaches l - PRUNE_NATS. A class left out adds less than e^-PRUNE_NATS relative to the sum
        (C - 1 of them: < 1e-20 for C < 10^6), below float64's 2^-53 = 1.1e-16 resolution: the result is the
        full logsumexp to rounding. Class solves per point (the cost; C without the bound), digits features of
        ResNet18 widths 16-64: 1.1-1.4 on ID test images, 1.1-2.5 on OoD sets, of C = 10. A batch whose full solves
        cost little (N C d^2 <= _DIRECT_WORK, e.g. a served request of a few images) is solved for every class.
        """
        self._check(z)
        c = self.num_classes
        if z.shape[0] * c * self.dim**2 <= _DIRECT_WORK:
            return torch.logsumexp(self.per_class_log_density(z, chunk_size), dim=1)
        chunk = chunk_size or max(1, _CHUNK_ELEMENTS // (2 * self.dim))  # two (n, d) float64 per solve
        const = self._log_const  # (C,)
        basis, centre, offset = self._bound_basis
        out = []
        for start in range(0, z.shape[0], chunk):
            zc = z[start:start + chunk].to(device=self.device, dtype=torch.float64)  # (n, d)
            n = zc.shape[0]
            proj = ((zc - centre) @ basis).view(n, c, offset.shape[1]) - offset  # (n, C, k) V_c^T (z - mu_c)
            # (n, C) upper bounds of log N_c(z); the 1e-8 slack keeps rounding from dropping a class that counts.
            bound = const - 0.5 * (1 - 1e-8) * proj.square_().sum(dim=2)
            first = torch.nn.functional.one_hot(bound.argmax(dim=1), c).bool()  # (n, C) best bound: solved first
            logp = torch.full((n, c), -math.inf, dtype=torch.float64, device=self.device)
            self._solve_into(logp, zc, first, const)
            floor = logp.max(dim=1, keepdim=True).values - PRUNE_NATS  # (n, 1) classes under it cannot matter
            self._solve_into(logp, zc, (bound >= floor) & ~first, const)
            out.append(torch.logsumexp(logp, dim=1))
        return torch.cat(out) if out else torch.empty(0, dtype=torch.float64, device=self.device)

    def _solve_into(self, logp: Tensor, z: Tensor, pairs: Tensor, const: Tensor) -> None:
        """logp[i, k] <- log N_k(z_i) for the (point, class) pairs marked in pairs (n, C) bool: one solve per class
        with a marked pair. The classes come from one reduction over pairs, not one row search per class: a served
        one-image request marks one or two of the C classes, and C - 2 empty searches cost more than its solves."""
        for k in torch.nonzero(pairs.any(dim=0)).flatten().tolist():
            rows = torch.nonzero(pairs[:, k]).flatten()
            logp[rows, k] = const[k] - 0.5 * _mahalanobis(self.chol[k], self.means[k], z[rows])

    @cached_property  # frozen dataclass: cached_property writes the instance __dict__ directly
    def _bound_basis(self) -> tuple[Tensor, Tensor, Tensor]:
        """log_density's bound: basis (d, C k) = [V_0 ... V_C-1], V_c = L_c^-T Q_c with Q_c (d, k) an orthonormal
        basis of L_c^-1 (mu_j - mu_c), j != c, k = min(C - 1, d) (QR's reduced Q); centre (d,) the mean of the
        class means, subtracted from z first so that the product does not lose digits to a large common offset;
        offset (C, k) = V_c^T (mu_c - centre).
        Cost: 2 (C-1) d^2 per class (two triangular solves with C-1 right-hand sides), once per instance (serving
        scores one image per call). One class: an empty basis, the bound is const and the class is solved."""
        c, d = self.num_classes, self.dim
        centre = self.means.mean(dim=0)  # (d,)
        others = [[j for j in range(c) if j != k] for k in range(c)]
        diffs = torch.stack([(self.means[o] - self.means[k]).T for k, o in enumerate(others)])  # (C, d, C-1)
        # Any orthonormal Q_c gives a valid bound (a zero difference, e.g. two equal means, only weakens it).
        q = torch.linalg.qr(torch.linalg.solve_triangular(self.chol, diffs, upper=False)).Q  # (C, d, k)
        v = torch.linalg.solve_triangular(self.chol.transpose(1, 2), q, upper=True)  # (C, d, k) L_c^-T Q_c
        offset = torch.einsum("cd,cdk->ck", self.means - centre, v)  # (C, k)
        return v.permute(1, 0, 2).reshape(d, -1), centre, offset

    def _check(self, z: Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected features (N, {self.dim}), got {tuple(z.shape)}")

    @cached_property
    def _log_const(self) -> Tensor:
        """(C,) -(d log 2pi + log det Sigma_c) / 2, log det from the Cholesky diagonal; once per instance."""
        log_det = 2.0 * self.chol.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
        return -0.5 * (self.dim * math.log(2 * math.pi) + log_det)

    def to(self, device: torch.device | str) -> ClassGaussians:
        degenerate = None if self.degenerate_dims is None else self.degenerate_dims.to(device)
        return ClassGaussians(self.means.to(device), self.chol.to(device), self.counts.to(device), self.jitter,
                              degenerate)

    def state_dict(self) -> dict:
        state = {"means": self.means, "chol": self.chol, "counts": self.counts, "jitter": self.jitter}
        return state if self.degenerate_dims is None else {**state, "degenerate_dims": self.degenerate_dims}

    @classmethod
    def from_state_dict(cls, state: dict) -> ClassGaussians:  # files written before degenerate_dims load too
        return cls(state["means"], state["chol"], state["counts"], float(state["jitter"]), state.get("degenerate_dims"))

    def save(self, path: str | Path) -> None:
        """torch.save of {means, chol, counts, jitter} (CPU tensors, loadable with weights_only=True)."""
        torch.save(self.to("cpu").state_dict(), path)

    @classmethod
    def load(cls, path: str | Path, map_location: torch.device | str = "cpu") -> ClassGaussians:
        return cls.from_state_dict(checkpoint.load(path, map_location=map_location))


def _mahalanobis(chol: Tensor, mean: Tensor, z: Tensor) -> Tensor:
    """(m,) ||L^-1 (z - mu)||^2 for rows of z (m, d) float64: one triangular solve."""
    r = z - mean  # (m, d); r.T is column-major, LAPACK's layout: the solve reads it without a copy
    return torch.linalg.solve_triangular(chol, r.T, upper=False).square_().sum(dim=0)


def _gram_lower(x: Tensor, out: Tensor, block: int = 256) -> Tensor:
    """Lower triangle of out (d, d) <- x^T x for x (n, d), by block rows (a SYRK; torch has none).

    Block row [a, b) is x[:, a:b]^T x[:, :b], the diagonal block included: at d = 2048 and block 256 that is
    36/64 of the multiply-adds of one x.T @ x, in products large enough for the BLAS to run at full speed.
    Above the diagonal blocks nothing is written: the Cholesky reads only the lower triangle.
    """
    d = x.shape[1]
    for a in range(0, d, block):
        b = min(a + block, d)
        torch.mm(x[:, a:b].T, x[:, :b], out=out[a:b, :b])
    return out


def zero_variance_dims(var: Tensor) -> Tensor:
    """(C, d) per-class variances (the covariance diagonals) -> (C,) int64 count of numerically zero-variance dims.

    Dimension j of class c counts when var[c, j] <= d * eps64 * max_j var[c, j] (eps64 = 2^-52): the numerical-rank
    tolerance of numpy's `matrix_rank` (max(M, N) * eps * largest singular value), applied to the diagonal. Such a
    pivot cannot be told from rounding error by a float64 Cholesky, so the class covariance is singular in that
    direction and only the jitter makes it invertible. Exactly constant features (a ReLU channel that is 0 for the
    whole class) have var = 0 and always count. A class whose variances are all 0 counts all d dimensions.
    """
    tol = var.shape[1] * torch.finfo(torch.float64).eps * var.amax(dim=1, keepdim=True)  # (C, 1)
    return (var <= tol).sum(dim=1)


def fit_class_gaussians(features: Tensor, labels: Tensor, num_classes: int | None = None) -> ClassGaussians:
    """Fit the DDU class Gaussians on (N, d) features with (N,) labels in [0, C); float64 on the features' device.

    num_classes defaults to labels.max() + 1. Every class needs at least 2 samples (ValueError otherwise);
    non-finite features raise ValueError; GaussianFitError if no jitter on the ladder works.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features (N, d) and labels (N,), got {tuple(features.shape)}, {tuple(labels.shape)}")
    x = features  # (N, d) as given; each class's rows are widened to float64 below (no (N, d) float64 copy)
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
    cov = torch.zeros(c, d, d, dtype=torch.float64, device=x.device)  # lower triangles filled below
    for k in range(c):  # per class: (n_k, d) float64 rows, centred in place, one symmetric product
        xk = x[labels == k].double()  # float64: covariances of 512-2048-d features need it
        means[k] = xk.mean(dim=0)
        xk -= means[k]
        _gram_lower(xk, out=cov[k]).div_(xk.shape[0] - 1)
    # An inf/nan feature makes its class mean non-finite (a float64 mean of finite float32 rows cannot
    # overflow): this check is free, the row-wise search runs only when it fires.
    if not bool(torch.isfinite(means).all()) and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).any(dim=1)
        raise ValueError(f"{int(bad.sum())} of {x.shape[0]} training feature rows are non-finite")

    diag = cov.diagonal(dim1=-2, dim2=-1)  # (C, d) view: the ladder rewrites it in place, no (C, d, d) copy per eps
    var = diag.clone()
    degenerate = zero_variance_dims(var)  # (C,)
    tried = None  # (C, d) the diagonal of the last Cholesky attempt
    for eps in JITTERS:
        torch.add(var, eps, out=diag)  # Sigma_c + eps I, bit for bit
        if tried is not None and torch.equal(diag, tried):
            continue  # the same matrix as the last (failed) attempt: the same result, so DDU's eps is unchanged
        chol, info = torch.linalg.cholesky_ex(cov)  # info (C,) int32: 0 = success; reads the lower triangle only
        if not bool(info.any()):
            return ClassGaussians(means, chol, counts, float(eps), degenerate)
        tried = diag.clone()
    failed = torch.nonzero(info).flatten().tolist()
    detail = ", ".join(f"class {k}: {int(counts[k])} samples" for k in failed)
    raise GaussianFitError(
        f"Cholesky failed for every jitter up to {JITTERS[-1]:g} in d={d} ({detail}; classes with fewer samples "
        "than dimensions are singular and rely on the jitter; huge feature scales defeat it)"
    )
