"""The served OoD scorer: base64 images in, per-image OoD scores, class and an ID/OoD decision out.

One request row is one image (PNG, JPEG, WebP, BMP or GIF bytes, base64). Each image is prepared exactly as the
training and OoD evaluation data were (ncood.data.registry):

    PIL decode (first frame, EXIF rotation applied) -> "L" if the image has no colour, else "RGB" (alpha dropped,
    palettes expanded, 16-bit grey scaled by 1/65535) -> float in [0, 1], (1, C, h, w) -> ncood.data.to_model_input
    (luma or channel repeat to the model's channels, antialiased bilinear resize to its H x W, normalization with
    the training set's mean/std).

Then one fp32 forward pass gives the pre-normalization features z, the classifier's input and the logits, and the
scores come from the OoD score registry (ncood.ood) with the trial's fitted states. The response has one column per
SERVED score (ncood.ood.served_scores(): every registered score except KNN, whose state is the train-feature bank,
and the TMLR 2024 Table 3 analysis measurements raw_max_logit and raw_logit_norm), named as in the registry except gmm, which keeps its first name, gmm_log_density; the package lists them
(ScorerSpec.scores, the signature, the `ncood` metadata). For the default registry:

    gmm_log_density  logsumexp_c log N(x; mu_c, Sigma_c), x the classifier input       (DDU; higher = more ID)
    feature_norm     ||z||_2 before normalization                                        (TMLR 2024)
    msp, max_logit, energy, logit_norm                                                   (logit baselines)
    mahalanobis, vim, react, ash, neco, neco_maxlogit                                    (ncood/ood/posthoc.py)
    predicted_class  the class name of argmax(logits)
    is_ood           gmm_log_density < t, t set on the ID validation set so that 95% of it is accepted

Packages of spec format 1 (before the post-hoc scores) serve their four columns gmm_log_density, feature_norm, msp,
max_logit, with the Gaussians in the feature space they were fitted in (spec.feature_space "raw" or "l2").

Decoding and validation of the request are ncood.serve.decoding; the MLflow pyfunc wrapper is ncood.serve.pyfunc.
The network is put in eval mode once, when the scorer is built (its spectral norms frozen: each SN conv's
W_eff computed once, ncood.models.freeze_spectral_norm), and every request runs under
torch.inference_mode: one batched forward (ncood.evaluate.extract, the function that feeds the evaluation, with
in_eval=True: no per-request walk over the submodules' flags) gives z and the logits, and every served score reads
that one pass through compute_scores, the evaluation's function (the float64 spaces and shared intermediates made
once per request: ScoreInputs.shared).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ncood import checkpoint
from ncood.data import DatasetInfo, to_model_input
from ncood.evaluate import classifier_inputs, extract
from ncood.models import create_model, freeze_spectral_norm
from ncood.ood import (SCORES, ClassGaussians, Head, ScoreFit, ScoreInputs, compute_scores, resolve_params,
                       served_scores, unpack_states)
from ncood.serve.decoding import ServingLimits, decode_batch

COLUMN_ALIASES = {"gmm": "gmm_log_density"}  # registry name -> response column, where they differ
EXTRA_COLUMNS = ("predicted_class", "is_ood")
SPEC_FORMAT = 2  # version of scorer.json; bump when its fields change meaning (2: scores, score_params; input space)
READABLE_FORMATS = (1, 2)
FORMAT1_SCORES = ("gmm", "feature_norm", "msp", "max_logit")  # what a format-1 package served (frozen: history)
SERVE_BATCH = 256  # images per forward when scoring (the server's requests are capped at max_images, 256 by default)


def score_columns(scores: Sequence[str]) -> dict[str, str]:
    """{response column: registry score} for `scores`, in their order (the response's column order)."""
    return {COLUMN_ALIASES.get(n, n): n for n in scores}


def output_columns(scores: Sequence[str]) -> tuple[str, ...]:
    """Every response column of a scorer serving `scores`."""
    return (*score_columns(scores), *EXTRA_COLUMNS)


OUTPUT_COLUMNS = output_columns(served_scores())  # a scorer packaged by this ncood


@dataclass(frozen=True)
class ScorerSpec:
    """Everything besides the tensors that the server needs (scorer.json beside weights.pt and gaussians.pt)."""

    arch: str
    model_kwargs: dict[str, Any]  # create_model(arch, **model_kwargs) rebuilds the network
    dataset: str  # the ID training set
    image_shape: tuple[int, int, int]  # (C, H, W) the network takes
    mean: tuple[float, ...]  # per-channel normalization of the training data
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    feature_space: str  # where the "input" scores read: "input" = model.classifier_input(z); format 1: "l2" | "raw"
    threshold: float  # is_ood = gmm_log_density < threshold
    threshold_tpr: float  # fraction of ID validation images with gmm_log_density >= threshold (target)
    threshold_n_val: int  # validation images it was set on
    limits: ServingLimits = field(default_factory=ServingLimits)
    trial: dict[str, Any] = field(default_factory=dict)  # condition, seed, full TrialConfig (provenance)
    scores: tuple[str, ...] = FORMAT1_SCORES  # the served scores, in response order (registry names)
    score_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # {score: {field: value}} as fitted
    format: int = SPEC_FORMAT

    def dataset_info(self) -> DatasetInfo:
        """The preprocessing as a DatasetInfo for to_model_input (from the saved values, not today's registry)."""
        return DatasetInfo(name=self.dataset, num_classes=len(self.class_names), can_be_id=True,
                           image_shape=self.image_shape, description=f"served {self.dataset} model input",
                           how_to_get="saved with the model", mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(image_shape=list(self.image_shape), mean=list(self.mean), std=list(self.std),
                 class_names=list(self.class_names), limits=self.limits.to_dict(), scores=list(self.scores))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScorerSpec:
        d = dict(d)
        if d.get("format") not in READABLE_FORMATS:
            raise ValueError(f"scorer spec format {d.get('format')!r}; this ncood reads formats {READABLE_FORMATS}: "
                             "serve the model with the ncood it was logged with (its code/ folder)")
        for key in ("image_shape", "mean", "std", "class_names", "scores"):
            if key in d:
                d[key] = tuple(d[key])
        d["limits"] = ServingLimits.from_dict(d.get("limits"))
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ScorerSpec:
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---- scoring (shared by the server and by the threshold computed at log time) --------------------------------
def _input_space(model: nn.Module, z: Tensor, feature_space: str) -> Tensor | None:
    """The "input" space of the scores: the classifier's input, or a format-1 package's GMM space (z or z/||z||)."""
    if feature_space == "input":
        return classifier_inputs(model, z)
    if feature_space == "l2":
        return torch.nn.functional.normalize(z, dim=1, eps=1e-12)
    if feature_space == "raw":
        return None
    raise ValueError(f"unknown scorer feature_space {feature_space!r}; expected input, l2 or raw")


@torch.inference_mode()
def score_model_input(model: nn.Module, fit: ScoreFit, x: Tensor, *, feature_space: str = "input",
                      scores: Sequence[str] | None = None, in_eval: bool = False) -> dict[str, Tensor]:
    """Normalized images x (N, C, H, W) -> {response column: (N,) float64, 'predicted': (N,) int64}, in fp32.

    scores: the registry scores to compute (default: those of `fit`). One eval-mode forward (ncood.evaluate.extract:
    IEEE fp32, no autocast: the decision threshold is set at the precision the server scores in) on the model's
    device, SERVE_BATCH images at a time; a model already in eval mode is left untouched, a training one is
    restored afterwards. in_eval=True (the served scorer, in eval mode from load): extract skips its walk over the
    submodules' flags.
    """
    z, lg = extract(model, x, SERVE_BATCH, in_eval=in_eval)  # (N, d), (N, C) fp32
    names = tuple(fit.scores if scores is None else scores)
    out = compute_scores(ScoreInputs(z, lg, _input_space(model, z, feature_space)), fit, names)
    return {**{col: out[name] for col, name in score_columns(names).items()}, "predicted": lg.argmax(dim=1)}


def _fit_key(score: str) -> str | None:
    if score not in SCORES:
        raise ValueError(f"the package serves score {score!r}, which this ncood does not register")
    return SCORES[score].fit_key


# ---- the scorer ----------------------------------------------------------------------------------------------
class Scorer:
    """The network, its fitted score states and its preprocessing on the CPU; `score_base64` serves a request."""

    def __init__(self, spec: ScorerSpec, model: nn.Module, states: Mapping[str, Any],
                 limits: ServingLimits | None = None) -> None:
        """states: {fit key: state} of the spec's scores (ncood.ood.unpack_states), "gmm" among them."""
        self.spec, self.limits = spec, limits or spec.limits
        self.info = spec.dataset_info()
        # Once: every request then runs the eval-mode forward without touching the flags, and the spectrally
        # normalized convs use their W_eff fixed here (the served weights never change).
        self.model = freeze_spectral_norm(model.eval())
        missing = sorted({k for n in spec.scores if (k := _fit_key(n)) is not None} - set(states))
        if missing or "gmm" not in spec.scores:
            raise ValueError(f"the scorer package lacks the fitted states {missing or ['gmm']} of its scores "
                             f"{list(spec.scores)}")
        params = resolve_params(spec.scores, spec.score_params)
        self.fit = ScoreFit(tuple(spec.scores), dict(states), params, Head.of(model.classifier))
        self.columns = output_columns(spec.scores)
        self.score_columns = score_columns(spec.scores)
        self.class_names = np.array(spec.class_names, dtype=object)  # (C,) indexed by the predicted classes

    @classmethod
    def from_files(cls, spec_path: str | Path, weights_path: str | Path, gaussians_path: str | Path,
                   scores_path: str | Path | None = None,
                   limit_overrides: Mapping[str, Any] | None = None) -> Scorer:
        """scores_path: the packed states of the scores besides gmm (scores.pt; format-1 packages have none)."""
        spec = ScorerSpec.load(spec_path)
        model = create_model(spec.arch, **spec.model_kwargs, state_dict=checkpoint.load(weights_path))
        limits = ServingLimits.from_dict({**spec.limits.to_dict(), **dict(limit_overrides or {})})
        states = unpack_states(checkpoint.load(scores_path)) if scores_path else {}
        return cls(spec, model, {**states, "gmm": ClassGaussians.load(gaussians_path)}, limits)

    def prepare(self, images01: Sequence[Tensor]) -> Tensor:
        """[(1, C_i, h_i, w_i) in [0, 1]] -> (N, *image_shape) normalized, in request order: to_model_input, the
        function that prepared the training data, once per group of same-sized images (its steps are per image)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(images01):
            groups.setdefault(tuple(x.shape), []).append(i)
        if len(groups) == 1:  # the usual request: every image the same size
            return to_model_input(torch.cat(list(images01)), self.info)
        out = torch.empty(len(images01), *self.spec.image_shape)
        for idx in groups.values():
            out[idx] = to_model_input(torch.cat([images01[i] for i in idx]), self.info)
        return out

    @torch.inference_mode()
    def score(self, x: Tensor) -> dict[str, np.ndarray]:
        """Normalized (N, *image_shape) -> {column: (N,) array} with every response column (the network stays in
        eval mode from __init__: no per-request mode walk)."""
        out = score_model_input(self.model, self.fit, x, feature_space=self.spec.feature_space, in_eval=True)
        block = torch.stack([out[col] for col in self.score_columns]).numpy(force=True)  # (S, N): one conversion
        cols = dict(zip(self.score_columns, block))  # rows: contiguous (N,) float64 views
        cols["predicted_class"] = self.class_names[out["predicted"].numpy(force=True)]
        cols["is_ood"] = cols["gmm_log_density"] < self.spec.threshold
        return cols

    @torch.inference_mode()
    def score_base64(self, values: Sequence[Any]) -> dict[str, np.ndarray]:
        """Request cells (base64 images) -> {column: (N,) array}; InputError naming the bad rows."""
        return self.score(self.prepare(decode_batch(values, self.limits)))


def __getattr__(name: str) -> Any:
    """`OODScorerModel` for packages logged before the pyfunc wrapper moved to ncood.serve.pyfunc: their entry file
    (artifacts/pyfunc_model.py) imports it from here, and a process that already imported this ncood loads them
    with it (lazy: ncood.serve.pyfunc imports this module)."""
    if name == "OODScorerModel":
        from ncood.serve.pyfunc import OODScorerModel

        return OODScorerModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
