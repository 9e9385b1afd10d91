"""One feature pass per image set -> the flat results dict (NC metrics + OoD detection + accuracy).

The evaluation of the seed paper (Sec. 4, Tables 1-3) and the TMLR 2024 paper (Table 2), as one pure step:

    train set  -> features, logits -> NC metrics (ncood.collapse) + the score fits (DDU class Gaussians)
    test set   -> features, logits -> accuracy/test + every score on ID images
    each OoD   -> features, logits -> every score -> detection metrics vs the ID test scores

Feature space: for an L2 model (`l2=True`) the classifier sees z / max(||z||, eps); the NC metrics (whose
NC3/NC4 relate the classifier to the class means) and the GMM are computed on those normalized features,
as the seed paper does; for other models on the raw z; with the ICML 2025 ETF projector the NC metrics use the
classifier's input normalize(P(z)) (the GMM stays on z). The feature-norm score always uses the raw z.
Keys come from ncood.keys; measurement knows nothing of MLflow (tracking logs the returned dict).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ncood import keys
from ncood.collapse import nc_metrics
from ncood.ood import ScoreFit, ScoreInputs, compute_scores, detection_metrics, fit_scores, to_feature_space

__all__ = ["exact_fp32", "extract", "evaluate", "format_results"]


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """IEEE fp32 inside: autocast off and, on CUDA, no TF32 in cuDNN convolutions or matmuls (TF32 keeps 10 mantissa
    bits, cuDNN uses it for fp32 convs by default). The global precision settings are restored afterwards."""
    with torch.autocast(device_type=device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision = matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved


@torch.no_grad()
def extract(model: nn.Module, x: Tensor, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Eval-mode forward of x (N, C, H, W) in batches -> (features (N, d) pre-normalization, logits (N, C)), fp32.

    `model(x)` must return (logits, features). Runs on the model's device (batches are moved there) in IEEE fp32
    (`exact_fp32`: no autocast even inside a caller's autocast region, no TF32), whatever precision training used:
    these features and logits feed the NC metrics, the float64 class Gaussians and every score, and DDU extracts
    its embeddings in fp32 too (DDU `utils/gmm_utils.py` get_embeddings: a plain forward). Every submodule's
    train/eval flag is restored.
    """
    modes = [(m, m.training) for m in model.modules()]  # restore per module: frozen BN etc. survive
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    feats, logits = [], []
    model.eval()
    try:
        with exact_fp32(device):
            for start in range(0, x.shape[0], batch_size):
                lg, ft = model(x[start:start + batch_size].to(device, non_blocking=True))
                feats.append(ft.float())
                logits.append(lg.float())
    finally:
        for m, was_training in modes:
            m.training = was_training
    if not feats:
        raise ValueError("extract() got an empty image set")
    return torch.cat(feats), torch.cat(logits)


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(dim=1) == y.to(logits.device)).double().mean())


def evaluate(model: nn.Module, data, ood_sets: Mapping[str, Tensor], *, l2: bool, batch_size: int = 1024,
             scores: Sequence[str] | None = None) -> tuple[dict[str, float], ScoreFit]:
    """Evaluate a trained model: NC on train features, accuracy, and every OoD score on test vs each OoD set.

    data: any object with .train/.val/.test each having .x (N, C, H, W) normalized images and .y (N,) labels
    (val may be empty or None). ood_sets: {name: images}. scores: score names (default: all registered).
    Returns (flat {key: float} with keys from ncood.keys, the ScoreFit whose Gaussians a checkpoint keeps).
    """
    t0 = time.perf_counter()
    space = "l2" if l2 else "raw"
    weight = model.classifier.weight.detach()  # (C, d)
    num_classes = weight.shape[0]
    results: dict[str, float] = {}

    train_f, train_lg = extract(model, data.train.x, batch_size)
    train_y = data.train.y.to(train_f.device)
    if getattr(model, "projector", None) is not None:  # ETF projector (ICML 2025): NC where the classifier looks
        with torch.no_grad():
            nc_f = model.classifier_input(train_f.to(weight.device)).float().to(train_f.device)
    else:
        nc_f = to_feature_space(train_f, space)
    nc = nc_metrics(nc_f, train_y, weight.to(train_f.device), predictions=train_lg.argmax(dim=1))
    del nc_f
    results.update({keys.nc_key(k): v for k, v in nc.items()})
    fit = fit_scores(train_f, train_y, feature_space=space, train_logits=train_lg, scores=scores,
                     num_classes=num_classes)
    del train_f, train_lg  # (45k, d) float32 on the device: free before the other passes
    if "gmm" in fit.state:
        results[keys.GMM_JITTER] = fit.gaussians.jitter
        degenerate = fit.gaussians.degenerate_dims  # (C,): the metric is the worst class's count
        results[keys.GMM_DEGENERATE_DIMS] = float(degenerate.max()) if degenerate is not None else 0.0

    if getattr(data, "val", None) is not None and data.val.x.shape[0] > 0:
        results[keys.ACC_VAL] = _accuracy(extract(model, data.val.x, batch_size)[1], data.val.y)
    test_f, test_lg = extract(model, data.test.x, batch_size)
    results[keys.ACC_TEST] = _accuracy(test_lg, data.test.y)
    id_scores = compute_scores(ScoreInputs(test_f, test_lg), fit)  # computed once, reused for every OoD set

    for set_name, images in ood_sets.items():
        ood_f, ood_lg = extract(model, images, batch_size)
        try:  # non-finite scores raise; say which OoD set produced them
            ood_scores = compute_scores(ScoreInputs(ood_f, ood_lg), fit)
        except ValueError as e:
            raise ValueError(f"OoD set {set_name!r}: {e}") from e
        for score_name, s_id in id_scores.items():
            metrics = detection_metrics(s_id, ood_scores[score_name])
            results.update({keys.ood_key(set_name, score_name, m): v for m, v in metrics.items()})

    results[keys.EVAL_TIME] = time.perf_counter() - t0  # every .item()/float() above synchronized the device
    return results, fit


def format_results(results: Mapping[str, float]) -> str:
    """A readable table: accuracy, NC metrics, then OoD rows (set x score) with AUROC / FPR95 / AUPR columns."""
    lines = []
    acc = [(k, results[k]) for k in (keys.ACC_TRAIN, keys.ACC_VAL, keys.ACC_TEST) if k in results]
    if acc:
        lines.append("accuracy   " + "   ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in acc))
    nc = [(m, results[keys.nc_key(m)]) for m in keys.NC_METRICS if keys.nc_key(m) in results]
    if nc:
        lines.append("neural collapse (train features)")
        lines += [f"  {m:<28s} {v:.4g}" for m, v in nc]
    if keys.GMM_JITTER in results:
        degenerate = results.get(keys.GMM_DEGENERATE_DIMS, 0)
        lines.append(f"gmm jitter {results[keys.GMM_JITTER]:g}, zero-variance dims (worst class) {degenerate:g}")
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for k, v in results.items():
        parsed = keys.parse_ood_key(k)
        if parsed:
            rows.setdefault(parsed[:2], {})[parsed[2]] = v
    if rows:
        heads = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
        width = max(len(f"{s} / {c}") for s, c in rows)
        lines.append(f"{'OoD set / score':<{width}s}  " + "  ".join(f"{heads[m]:>8s}" for m in keys.DETECTION_METRICS))
        for (s, c), vals in rows.items():
            cells = "  ".join(f"{vals[m]:8.4f}" if m in vals else f"{'-':>8s}" for m in keys.DETECTION_METRICS)
            lines.append(f"{f'{s} / {c}':<{width}s}  {cells}")
    if keys.EVAL_TIME in results:
        lines.append(f"evaluation took {results[keys.EVAL_TIME]:.1f} s")
    return "\n".join(lines)
