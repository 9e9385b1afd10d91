"""One feature pass per image set -> the flat results dict (NC metrics + OoD detection + accuracy).

The evaluation of the seed paper (Sec. 4, Tables 1-3) and the TMLR 2024 paper (Table 2), as one pure step:

    train set  -> features, logits -> NC metrics (ncood.collapse) + every score's fit (DDU class Gaussians, ...)
    test set   -> features, logits -> accuracy/test + every score on ID images
    each OoD   -> features, logits -> every score -> detection metrics vs the ID test scores

Feature spaces (ncood.ood.scores): each pass keeps the raw features z, the logits and the classifier's input x =
model.classifier_input(z): z / max(||z||, eps) for an L2 model (seed paper eq. 9), normalize(P(z)) for an ICML 2025
ETF-projector model, z otherwise. The NC metrics (whose NC3/NC4 relate the classifier to the class means) use x, as
do the GMM and the post-hoc detectors; the feature-norm score reads z. For projector models that is where the ICML
2025 code ("Controlling Neural Collapse Enhances OoD Detection and Transfer Learning", yousuf907/NC-OOD) measures
OoD detection: ood_det/config.py:244-249 hooks `projection_head.2` (the projector output) beside the encoder, and
ood_det/linear_probe_det.py:69-71, 89-90, 119-120 L2-normalizes that output before its linear probe and energy score.
The model interface: `model(x)` -> (logits, z), `model.classifier` (nn.Linear) and `model.classifier_input(z)`
(every ncood model; ncood.adapters wraps torchvision/timm classifiers the same way).
Keys come from ncood.keys; measurement knows nothing of MLflow (tracking logs the returned dict).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ncood import keys
from ncood.collapse import nc_metrics
from ncood.ood import (SCORES, Head, ScoreFit, ScoreInputs, compute_scores, detection_metrics, fit_diagnostics,
                       fit_scores)

__all__ = ["eval_mode", "exact_fp32", "extract", "evaluate", "feature_pass", "classifier_inputs", "format_results"]


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


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside; the submodules that were training are put back afterwards (frozen BN and the
    like survive), even under an eval parent (tests/test_evaluate.py). A model all in eval mode (the served scorer's
    network, put in eval mode once at load) costs one walk over its submodules and no flag writes."""
    training = [m for m in model.modules() if m.training]
    if not training:
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


@torch.no_grad()
def extract(model: nn.Module, x: Tensor, batch_size: int = 1024, *, in_eval: bool = False) -> tuple[Tensor, Tensor]:
    """Eval-mode forward of x (N, C, H, W) in batches -> (features (N, d) pre-normalization, logits (N, C)), fp32.

    The one batched forward of ncood: the evaluation's feature passes and the served scorer (under
    torch.inference_mode there) both call it. `model(x)` must return (logits, features). Runs on the model's
    device (batches are moved there) in IEEE fp32 (`exact_fp32`: no autocast even inside a caller's autocast region,
    no TF32), whatever precision training used: these features and logits feed the NC metrics, the float64 class
    Gaussians and every score, and DDU extracts its embeddings in fp32 too (DDU `utils/gmm_utils.py`
    get_embeddings: a plain forward). Train/eval flags: `eval_mode`; in_eval=True skips its walk over the submodules
    (~0.1 ms for a ResNet18, a tenth of a one-image request) for a caller that keeps the whole network in eval mode
    (the served scorer: put in eval mode once at load); a model whose top module is training is refused then.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    if in_eval and model.training:
        raise ValueError("extract(in_eval=True) got a model in training mode; call model.eval() first or drop in_eval")
    feats, logits = [], []
    with contextlib.nullcontext() if in_eval else eval_mode(model), exact_fp32(device):
        for start in range(0, x.shape[0], batch_size):
            lg, ft = model(x[start:start + batch_size].to(device, non_blocking=True))
            feats.append(ft.float())
            logits.append(lg.float())
    if not feats:
        raise ValueError("extract() got an empty image set")
    if len(feats) == 1:  # one batch (a served request): no copy
        return feats[0], logits[0]
    return torch.cat(feats), torch.cat(logits)


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(dim=1) == y.to(logits.device)).double().mean())


@torch.no_grad()
def classifier_inputs(model: nn.Module, features: Tensor, batch_size: int = 8192) -> Tensor | None:
    """(N, d) raw features -> (N, d') what `model.classifier` multiplies, float32 on the features' device; None
    when the classifier sees z itself (a model without L2 normalization or projector: no copy is kept)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, features.shape[0], batch_size):
        z = features[start:start + batch_size].to(device)
        x = model.classifier_input(z)
        if x is z:  # the identity: FeatureClassifier returns z itself
            return None
        out.append(x.float().to(features.device))
    return torch.cat(out) if out else None


def feature_pass(model: nn.Module, x: Tensor, batch_size: int = 1024) -> ScoreInputs:
    """One extract() of x -> ScoreInputs: raw features, logits and the classifier's input."""
    features, logits = extract(model, x, batch_size)
    return ScoreInputs(features, logits, classifier_inputs(model, features))


def _check_model(model: nn.Module, l2: bool | None) -> None:
    missing = [a for a in ("classifier", "classifier_input") if not hasattr(model, a)]
    if missing:
        raise TypeError(f"evaluate() needs a model with `classifier` (nn.Linear) and `classifier_input(z)`; "
                        f"{type(model).__name__} lacks {missing}. Wrap torchvision/timm classifiers with "
                        "ncood.adapters.as_feature_classifier")
    if l2 is not None and hasattr(model, "l2") and bool(model.l2) != bool(l2):
        raise ValueError(f"evaluate(l2={l2}) but the model has l2={model.l2}: the model's own normalization is "
                         "what the classifier sees; drop the l2 argument or pass the matching value")


def evaluate(model: nn.Module, data, ood_sets: Mapping[str, Tensor], *, l2: bool | None = None,
             batch_size: int = 1024, scores: Sequence[str] | None = None,
             score_params: Mapping[str, Any] | None = None) -> tuple[dict[str, float], ScoreFit]:
    """Evaluate a trained model: NC on train features, accuracy, and every OoD score on test vs each OoD set.

    data: any object with .train/.val/.test each having .x (N, C, H, W) normalized images and .y (N,) labels
    (val may be empty or None). ood_sets: {name: images}. scores: score names (default: all registered);
    score_params: {score: {field: value}} hyperparameter overrides. l2: optional check against model.l2.
    Returns (flat {key: float} with keys from ncood.keys, the ScoreFit whose Gaussians a checkpoint keeps).
    """
    t0 = time.perf_counter()
    _check_model(model, l2)
    head = Head.of(model.classifier)  # (C, d') weight and bias, detached copies
    num_classes = head.weight.shape[0]
    results: dict[str, float] = {}

    train = feature_pass(model, data.train.x, batch_size)
    train_y = data.train.y.to(train.features.device)
    nc = nc_metrics(train.space("input"), train_y, head.weight.to(train.features.device),
                    predictions=train.logits.argmax(dim=1))
    results.update({keys.nc_key(k): v for k, v in nc.items()})
    fit = fit_scores(train, train_y, num_classes=num_classes, head=head, scores=scores, params=score_params)
    del train  # (45k, d) float32 on the device: free before the other passes
    results.update(fit_diagnostics(fit))

    if getattr(data, "val", None) is not None and data.val.x.shape[0] > 0:
        results[keys.ACC_VAL] = _accuracy(extract(model, data.val.x, batch_size)[1], data.val.y)
    test = feature_pass(model, data.test.x, batch_size)
    results[keys.ACC_TEST] = _accuracy(test.logits, data.test.y)
    id_scores = compute_scores(test, fit)  # computed once, reused for every OoD set
    del test

    for set_name, images in ood_sets.items():
        try:  # non-finite scores raise; say which OoD set produced them
            ood_scores = compute_scores(feature_pass(model, images, batch_size), fit)
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
    diag = [(k, v) for k, v in results.items() if keys.parse_ood_key(k) is None and k.split("/")[0] in SCORES]
    if diag:
        lines.append("score fits   " + "   ".join(f"{k} {v:g}" for k, v in diag))
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for k, v in results.items():
        parsed = keys.parse_ood_key(k)
        if parsed:
            rows.setdefault(parsed[:2], {})[parsed[2]] = v
    if rows:
        heads = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out",
                 "fpr95_id_rejected": "IDrej@95"}
        width = max(len(f"{s} / {c}") for s, c in rows)
        lines.append(f"{'OoD set / score':<{width}s}  " + "  ".join(f"{heads[m]:>8s}" for m in keys.DETECTION_METRICS))
        for (s, c), vals in rows.items():
            cells = "  ".join(f"{vals[m]:8.4f}" if m in vals else f"{'-':>8s}" for m in keys.DETECTION_METRICS)
            lines.append(f"{f'{s} / {c}':<{width}s}  {cells}")
        lines.append("FPR95: OoD accepted at 95% of ID accepted (the papers); IDrej@95: ID rejected at 95% of OoD "
                     "caught (OpenOOD's FPR@95)")
    if keys.EVAL_TIME in results:
        lines.append(f"evaluation took {results[keys.EVAL_TIME]:.1f} s")
    return "\n".join(lines)
