"""Post-hoc OoD detectors researchers compare against, in the one score registry (ncood.ood.scores).

Every score here reads the CLASSIFIER'S INPUT x ("input" space: z / ||z|| for L2 models, normalize(P(z)) for
ETF-projector models, z otherwise): the penultimate layer these papers define their detectors on is the vector the
final linear layer multiplies, so logits = x W^T + b holds exactly and the head (W, b) recomputes them. Higher = ID.

    mahalanobis    -min_c (x - mu_c)^T Sigma^+ (x - mu_c), one covariance Sigma shared by the classes, estimated
                   on the class-centred train features (divide by N), no input preprocessing, last layer only
                   (Lee et al., NeurIPS 2018, eq. 2; as sklearn's EmpiricalCovariance in the ViM code,
                   haoqiwang/vim benchmark.py:318-345, Sigma^+ its pinvh pseudo-inverse)
    knn            -||x/||x|| - x_(k)||, the distance to the k-th nearest normalized train feature, k = 50
                   (Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022: k = 50 for
                   CIFAR-10; OpenOOD configs/postprocessors/knn.yml K 50)
    vim            energy(x W^T + b) - alpha ||(x - u) R||, u = -W^+ b, R the (D - dim) least principal directions
                   of the train (x - u), alpha = mean max logit / mean ||(x - u) R|| on the train set (Wang et al.,
                   "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022; dim rule of the ViM code,
                   benchmark.py:230-235: 1000 if D >= 2048, 512 if D >= 768, else D // 2)
    react          energy(min(x, c) W^T + b), c the 90th percentile of the train activations (Sun et al., "ReAct:
                   Out-of-distribution Detection With Rectified Activations", NeurIPS 2021)
    ash            energy(ASH(x) W^T + b): ASH-B at percentile 0.9 (Djurisic et al., "Extremely Simple Activation
                   Shaping for OoD Detection", ICLR 2023: "a large portion (e.g. 90%) of a sample's activation ... is
                   removed"). ASH-B because it is OpenOOD v1.5's ASH (openood/networks/ash_net.py:17-22 applies
                   ash_b; configs/postprocessors/ash.yml percentile 90): numbers stay comparable with the benchmark
                   every OoD paper reports. `variant` switches to ash-s / ash-p.
    neco           ||P s(x)|| / ||s(x)||, s the StandardScaler of the train features and P the projection on their
                   top `dim` principal directions (Ammar et al., "NECO: NEural Collapse Based Out-of-distribution
                   detection", ICLR 2024; the NECO code's `neco`: StandardScaler, sklearn PCA, numerator centred by
                   the PCA mean). dim default C (under neural collapse the class means span C - 1 directions; the
                   NECO code takes `neco_dim` per model as an argument)
    neco_maxlogit  neco x max_c logits_c: the NECO code's variant (applied there to its non-ResNet models); shares
                   NECO's fit, so one SVD serves both per evaluation

From pytorch-ood 0.4.0: the ReAct threshold (ReAct.fit_feature_maps: np.percentile of the train activations), the
clip-and-score (ReAct.predict_feature_maps) and the ASH shaping and scoring (ASH.predict_feature_maps: ash_b/_s/_p),
with pytorch-ood's energy; ncood passes precomputed features as 1x1 feature maps and the head (W, b) in float64.
Written here instead, each checked against pytorch-ood (or the paper's code) in tests/test_posthoc.py:
  - Mahalanobis: pytorch-ood's fit_features sums the class scatter without dividing by N, adds a fixed 1e-6 ridge
    (a regularizer whose strength depends on N and the feature scale) and inverts it with torch.linalg.inv in
    float32; under neural collapse the shared covariance is near singular and that inverse is not the estimator.
    Here: float64, the pseudo-inverse of Lee et al.'s estimator (eigh, the scipy pinvh cutoff), scored through its
    whitening so no distance loses digits to cancellation; its rank is logged (mahalanobis/rank).
  - KNN: pytorch-ood's KNN runs sklearn's NearestNeighbors on the CPU with n_jobs=-1 (every core of the node, not
    the trial's share), which would cost minutes per evaluation on CIFAR-sized banks; here the same exact k-th
    distance in float64 on the trial's device, in chunks.
  - ViM: pytorch-ood casts features, W and b to float32 (`.float()`) before the eigendecomposition; the residual of
    collapsed ID features is small against ||x|| and loses its digits there. Here float64 throughout.
  - NECO: pytorch-ood has none.
Not registered: the block-selection feature norm of Yu et al. ("Block Selection Method for Using Feature Norm in
Out-of-distribution Detection", CVPR 2023). It scores the feature-map norm of an intermediate block, chosen per
model by the norm ratio of ID images and jigsaw-shuffled pseudo-OoD images: it needs every block's output and a
second, synthetic image set, neither of which the one feature pass (z, logits, classifier input) provides.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ncood.ood.scores import FitData, Fitted, ScoreInputs, register_score

__all__ = ["KNNParams", "ViMParams", "ReActParams", "ASHParams", "NECOParams", "vim_dim"]

_CHUNK_ELEMENTS = 2**25  # float64 elements of one (rows, bank) distance block: 256 MiB


def _fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        hint = f"; use {value / 100:g} instead of {value:g}" if 1.0 < value <= 100.0 else ""
        raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}{hint}")


# pytorch-ood 0.4.0's ASH.variants (tests/test_posthoc.py checks they match). The detectors are imported where they
# run: importing pytorch_ood loads torchvision's model zoo and torch._dynamo (~3 s), which a sweep's driver, which
# imports this registry for the score parameters it logs, never needs.
ASH_VARIANTS = ("ash-b", "ash-p", "ash-s")


def _energy_of_pytorch_ood(outlier_score: Tensor) -> Tensor:
    """pytorch-ood scores outliers high (EnergyBased.score = -logsumexp); ncood scores ID high."""
    return -outlier_score


def _head_on_maps(fitted: Fitted, score: str):
    """The classifier as pytorch-ood's `head`: (N, d, 1, 1) feature maps -> (N, C) float64 logits."""
    head = fitted.need_head(score)
    return lambda maps: head(maps.flatten(1))


# ---- Mahalanobis (Lee et al. 2018) ----------------------------------------------------------------------------------
def _fit_mahalanobis(data: FitData, params: None) -> dict:
    """Shared covariance of the class-centred train features (divide by N), its pseudo-inverse as a whitening.

    State: centre (d,), whiten (d, r) with Sigma^+ = whiten whiten^T, whitened class means (C, r), rank r; float64.
    """
    x = data.train.space("input")
    d, n = x.shape[1], x.shape[0]
    means = torch.zeros(data.num_classes, d, dtype=torch.float64, device=x.device)
    cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for c in range(data.num_classes):  # one (n_c, d) float64 block at a time
        xc = x[data.labels == c].double()
        if xc.shape[0] == 0:
            raise ValueError(f"mahalanobis: class {c} has no training samples")
        means[c] = xc.mean(dim=0)
        xc -= means[c]
        cov += xc.T @ xc
    cov /= n
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    cutoff = d * torch.finfo(torch.float64).eps * evals.abs().max()  # scipy.linalg.pinvh's default rtol, as sklearn
    keep = evals > cutoff
    whiten = evecs[:, keep] / evals[keep].sqrt()  # (d, r): Sigma^+ = whiten whiten^T
    centre = means.mean(dim=0)  # subtracted first: the products below work on small numbers
    return {"centre": centre, "whiten": whiten, "means": (means - centre) @ whiten,
            "rank": torch.tensor(int(keep.sum()))}


@register_score("mahalanobis", space="input", fit=_fit_mahalanobis, diagnostics=lambda s: {"rank": s["rank"]})
def mahalanobis(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    st = fitted.state
    w = (inputs.space64("input") - st["centre"]) @ st["whiten"]  # (N, r) whitened features
    means = st["means"]  # (C, r) whitened class means
    rows = max(1, _CHUNK_ELEMENTS // max(1, means.numel()))  # (rows, C, r) float64 differences per block: <= 256 MiB
    # (N, C) squared distances as sums of squared differences (no cancellation), one broadcast per block of rows
    return torch.cat([-(wc[:, None] - means).square_().sum(dim=2).amin(dim=1) for wc in w.split(rows)])


# ---- KNN (Sun et al. 2022) ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KNNParams:
    k: int = 50  # the k-th nearest train feature (Sun et al. 2022: 50 for CIFAR-10)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"knn k must be an int >= 1, got {self.k!r}")


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.double(), dim=1, eps=1e-12)  # x / max(||x||, 1e-12), as pytorch-ood's KNN


def _fit_knn(data: FitData, params: KNNParams) -> dict:
    bank = _unit(data.train.space("input"))  # (N, d) float64
    if params.k > bank.shape[0]:
        raise ValueError(f"knn k={params.k} exceeds the {bank.shape[0]} training features")
    return {"bank": bank, "sq": bank.square().sum(dim=1)}


@register_score("knn", space="input", params=KNNParams(), fit=_fit_knn, served=False)
def knn(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    bank, sq, k = fitted.state["bank"], fitted.state["sq"], fitted.params.k
    q = _unit(inputs.space("input")).to(bank.device)
    rows = max(1, _CHUNK_ELEMENTS // bank.shape[0])
    out = []
    for start in range(0, q.shape[0], rows):
        qc = q[start:start + rows]  # (n, d)
        d2 = (qc.square().sum(dim=1, keepdim=True) + sq - 2 * qc @ bank.T).clamp_min_(0)  # (n, N) squared distances
        out.append(d2.topk(k, dim=1, largest=False).values[:, -1])
    return -torch.cat(out).sqrt()


# ---- ViM (Wang et al. 2022) -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViMParams:
    dim: int | None = None  # principal subspace dimension; None: the ViM code's rule (vim_dim)

    def __post_init__(self) -> None:
        if self.dim is not None and (isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1):
            raise ValueError(f"vim dim must be None (the ViM rule) or an int >= 1, got {self.dim!r}")


def vim_dim(feature_dim: int) -> int:
    """The ViM code's principal dimension (benchmark.py:230-235): 1000 if D >= 2048, 512 if D >= 768, else D // 2."""
    return 1000 if feature_dim >= 2048 else 512 if feature_dim >= 768 else feature_dim // 2


def _fit_vim(data: FitData, params: ViMParams) -> dict:
    head = data.need_head("vim")
    x = data.train.space("input").double()  # (N, D)
    big_d = x.shape[1]
    dim = vim_dim(big_d) if params.dim is None else params.dim
    if not 1 <= dim < big_d:
        raise ValueError(f"vim dim={dim} must lie in [1, {big_d}) for {big_d}-dimensional features")
    w = head.weight.to(x.device, torch.float64)
    b = torch.zeros(w.shape[0], dtype=torch.float64, device=x.device) if head.bias is None else head.bias.to(
        x.device, torch.float64)
    u = -(torch.linalg.pinv(w) @ b)  # (D,) the origin where the logits vanish
    xu = x - u
    _, evecs = torch.linalg.eigh(xu.T @ xu / x.shape[0])  # ascending eigenvalues
    null = evecs[:, : big_d - dim].contiguous()  # (D, D - dim) the least principal directions
    vlogit = (xu @ null).norm(dim=1)
    if float(vlogit.mean()) == 0.0:
        raise ValueError("vim: the train features have no residual outside the principal subspace; lower dim")
    alpha = head(x).amax(dim=1).mean() / vlogit.mean()
    return {"u": u, "null": null, "alpha": alpha, "dim": torch.tensor(dim)}


@register_score("vim", space="input", params=ViMParams(), fit=_fit_vim,
                diagnostics=lambda s: {"alpha": s["alpha"], "dim": s["dim"]})
def vim(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    st = fitted.state
    x = inputs.space64("input")
    energy = torch.logsumexp(fitted.need_head("vim")(x), dim=1)
    return energy - st["alpha"] * ((x - st["u"]) @ st["null"]).norm(dim=1)


# ---- ReAct (Sun et al. 2021) and ASH (Djurisic et al. 2023), through pytorch-ood ------------------------------------
@dataclass(frozen=True)
class ReActParams:
    percentile: float = 0.9  # the clip threshold is this quantile of the train activations (paper: 90th)

    def __post_init__(self) -> None:
        _fraction("react percentile", self.percentile)


def _fit_react(data: FitData, params: ReActParams) -> dict:
    from pytorch_ood.detector import ReAct

    x = data.train.space("input")
    detector = ReAct(backbone=None, head=None, percentile=params.percentile)
    detector.fit_feature_maps(x.detach().float().cpu(), data.labels.cpu())  # np.percentile over all N x d values
    return {"threshold": torch.tensor(detector.threshold, dtype=torch.float64)}


@register_score("react", space="input", params=ReActParams(), fit=_fit_react,
                diagnostics=lambda s: {"threshold": s["threshold"]})
def react(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    from pytorch_ood.detector import ReAct

    x = inputs.space64("input")
    detector = ReAct(backbone=None, head=_head_on_maps(fitted, "react"), threshold=float(fitted.state["threshold"]))
    return _energy_of_pytorch_ood(detector.predict_feature_maps(x[:, :, None, None]))


@dataclass(frozen=True)
class ASHParams:
    variant: str = "ash-b"  # OpenOOD v1.5's choice (module docstring); ash-s, ash-p also
    percentile: float = 0.9  # fraction of each sample's activations set to zero

    def __post_init__(self) -> None:
        if self.variant not in ASH_VARIANTS:
            raise ValueError(f"ash variant must be one of {sorted(ASH_VARIANTS)}, got {self.variant!r}")
        _fraction("ash percentile", self.percentile)


@register_score("ash", space="input", params=ASHParams())
def ash(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    from pytorch_ood.detector import ASH

    x = inputs.space64("input")
    p = fitted.params
    detector = ASH(backbone=None, head=_head_on_maps(fitted, "ash"), variant=p.variant, percentile=p.percentile)
    return _energy_of_pytorch_ood(detector.predict_feature_maps(x[:, :, None, None]))


# ---- NECO (Ammar et al. 2024) ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NECOParams:
    standardize: bool = True  # StandardScaler before the PCA, as the NECO code does
    dim: int | None = None  # principal directions kept; None: the number of classes C

    def __post_init__(self) -> None:
        if self.dim is not None and (isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1):
            raise ValueError(f"neco dim must be None (C) or an int >= 1, got {self.dim!r}")


def _fit_neco(data: FitData, params: NECOParams) -> dict:
    """StandardScaler (mean, population SD; a zero SD scales by 1, as sklearn) then PCA on the scaled train set."""
    x = data.train.space("input").double()  # (N, D)
    mean = x.mean(dim=0) if params.standardize else torch.zeros_like(x[0])
    std = x.std(dim=0, correction=0) if params.standardize else torch.ones_like(x[0])
    scale = torch.where(std < 10 * torch.finfo(torch.float64).eps, torch.ones_like(std), std)
    xs = (x - mean) / scale
    pca_mean = xs.mean(dim=0)
    dim = data.num_classes if params.dim is None else params.dim
    _, _, vh = torch.linalg.svd(xs - pca_mean, full_matrices=False)  # vh (min(N, D), D)
    if dim > vh.shape[0]:
        raise ValueError(f"neco dim={dim} exceeds the {vh.shape[0]} principal directions of the train features")
    return {"mean": mean, "scale": scale, "pca_mean": pca_mean, "components": vh[:dim].contiguous(),
            "dim": torch.tensor(dim)}


def _neco_ratio(inputs: ScoreInputs, st: dict) -> Tensor:
    """(N,) ||PCA projection|| / ||x|| of the scaled inputs, made once per inputs for neco and neco_maxlogit."""
    def compute() -> Tensor:
        xs = (inputs.space64("input") - st["mean"]) / st["scale"]  # (N, D) scaled
        return ((xs - st["pca_mean"]) @ st["components"].T).norm(dim=1) / xs.norm(dim=1).clamp_min(1e-12)
    return inputs.shared("neco_ratio", compute, of=st)  # st: the one fitted state both scores share


@register_score("neco", space="input", params=NECOParams(), fit=_fit_neco, diagnostics=lambda s: {"dim": s["dim"]})
def neco(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return _neco_ratio(inputs, fitted.state)


@register_score("neco_maxlogit", space="input", logits=True, shares="neco")
def neco_maxlogit(inputs: ScoreInputs, fitted: Fitted) -> Tensor:
    return _neco_ratio(inputs, fitted.state) * inputs.space64("logits").amax(dim=1)
