"""The served OoD scorer: base64 images in, per-image OoD scores, class and an ID/OoD decision out.

One request row is one image (PNG, JPEG, WebP, BMP or GIF bytes, base64). Each image is prepared exactly as the
training and OoD evaluation data were (ncood.data.registry):

    PIL decode (first frame, EXIF rotation applied) -> "L" if the image has no colour, else "RGB" (alpha dropped,
    palettes expanded, 16-bit grey scaled by 1/65535) -> float in [0, 1], (1, C, h, w) -> ncood.data.to_model_input
    (luma or channel repeat to the model's channels, antialiased bilinear resize to its H x W, normalization with
    the training set's mean/std).

Then one fp32 forward pass gives the pre-normalization features z, the classifier's input and the logits, and the
scores come from the OoD score registry (ncood.ood) with the trial's fitted states. The response has one column per
SERVED score (ncood.ood.served_scores(): every registered score except those whose state is the train-feature bank,
i.e. KNN), named as in the registry except gmm, which keeps its first name, gmm_log_density; the package lists them
(ScorerSpec.scores, the signature, the `ncood` metadata). For the default registry:

    gmm_log_density  logsumexp_c log N(x; mu_c, Sigma_c), x the classifier input       (DDU; higher = more ID)
    feature_norm     ||z||_2 before normalization                                        (TMLR 2024)
    msp, max_logit, energy, logit_norm                                                   (logit baselines)
    mahalanobis, vim, react, ash, neco, neco_maxlogit                                    (ncood/ood/posthoc.py)
    predicted_class  the class name of argmax(logits)
    is_ood           gmm_log_density < t, t set on the ID validation set so that 95% of it is accepted

Packages of spec format 1 (before the post-hoc scores) serve their four columns gmm_log_density, feature_norm, msp,
max_logit, with the Gaussians in the feature space they were fitted in (spec.feature_space "raw" or "l2").

Bad input (not base64, not an image, truncated, over the byte or pixel cap, empty batch, too many images, missing
column) raises `InputError` naming the rows and the problem; the pyfunc wrapper turns it into an
`MlflowException(INVALID_PARAMETER_VALUE)`, which MLflow's scoring server returns as HTTP 400.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from torch import Tensor, nn

from ncood import checkpoint
from ncood.data import DatasetInfo, to_model_input
from ncood.evaluate import classifier_inputs
from ncood.models import create_model
from ncood.ood import (SCORES, ClassGaussians, Head, ScoreFit, ScoreInputs, compute_scores, resolve_params,
                       served_scores, unpack_states)
from ncood.ood.metrics import threshold_at_tpr  # the FPR95 threshold definition, reused for is_ood

INPUT_COLUMN = "image"
COLUMN_ALIASES = {"gmm": "gmm_log_density"}  # registry name -> response column, where they differ
EXTRA_COLUMNS = ("predicted_class", "is_ood")
SPEC_FORMAT = 2  # version of scorer.json; bump when its fields change meaning (2: scores, score_params; input space)
READABLE_FORMATS = (1, 2)
FORMAT1_SCORES = ("gmm", "feature_norm", "msp", "max_logit")  # what a format-1 package served (frozen: history)


def score_columns(scores: Sequence[str]) -> dict[str, str]:
    """{response column: registry score} for `scores`, in their order (the response's column order)."""
    return {COLUMN_ALIASES.get(n, n): n for n in scores}


def output_columns(scores: Sequence[str]) -> tuple[str, ...]:
    """Every response column of a scorer serving `scores`."""
    return (*score_columns(scores), *EXTRA_COLUMNS)


OUTPUT_COLUMNS = output_columns(served_scores())  # a scorer packaged by this ncood
_DATA_URI = re.compile(r"^data:[\w.+/-]*;base64,", re.IGNORECASE)  # 'data:image/png;base64,' prefix, optional
_WHITESPACE = re.compile(rb"\s+")


class InputError(ValueError):
    """A request the scorer cannot use; the message names the rows (0-based) and what is wrong with each."""


@dataclass(frozen=True)
class ServingLimits:
    """Caps on one request; set at log time (in the spec artifact) and overridable at serve time through the
    environment variable NCOOD_SERVING_LIMITS, e.g. NCOOD_SERVING_LIMITS='{"max_images": 512}'.

    Not MLflow's model_config: Model.log would copy model_config into the trial run's params, and every run of a
    sweep must show the same params (the TrialConfig fields) in MLflow's compare view."""

    max_images: int = 256  # rows per request
    max_image_bytes: int = 4 * 2**20  # encoded (decoded-from-base64) bytes per image: 4 MiB
    max_pixels: int = 2048 * 2048  # width x height per image, checked from the header before decoding
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # PIL format names accepted

    def __post_init__(self) -> None:
        for name in ("max_images", "max_image_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"serving limit {name} must be an int >= 1, got {value!r}")
        object.__setattr__(self, "formats", tuple(str(f).upper() for f in self.formats))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ServingLimits:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d or {}) - known)
        if unknown:
            raise ValueError(f"unknown serving limits {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if k == "formats" else v for k, v in (d or {}).items()})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "formats": list(self.formats)}


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
def score_model_input(model: nn.Module, fit: ScoreFit, x: Tensor, batch_size: int = 256, *,
                      feature_space: str = "input", scores: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Normalized images x (N, C, H, W) -> {response column: (N,) float64, 'predicted': (N,) int64}, in fp32.

    scores: the registry scores to compute (default: those of `fit`). No autocast: the server scores in fp32 on the
    CPU, and the decision threshold must be set at that precision. Runs on the model's device; every submodule's
    train/eval flag is restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    device = next(model.parameters()).device
    feats, logits = [], []
    model.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            lg, z = model(x[start:start + batch_size].to(device).float())  # (B, C), (B, d)
            feats.append(z.float())
            logits.append(lg.float())
    finally:
        for m, was_training in modes:
            m.training = was_training
    z, lg = torch.cat(feats), torch.cat(logits)
    names = tuple(fit.scores if scores is None else scores)
    out = compute_scores(ScoreInputs(z, lg, _input_space(model, z, feature_space)), fit, names)
    return {**{col: out[name] for col, name in score_columns(names).items()}, "predicted": lg.argmax(dim=1)}


LIMITS_ENV = "NCOOD_SERVING_LIMITS"


def _fit_key(score: str) -> str | None:
    if score not in SCORES:
        raise ValueError(f"the package serves score {score!r}, which this ncood does not register")
    return SCORES[score].fit_key


def limits_from_env() -> dict[str, Any]:
    """ServingLimits overrides from $NCOOD_SERVING_LIMITS (a JSON object); {} when unset."""
    raw = os.environ.get(LIMITS_ENV, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{LIMITS_ENV} is not valid JSON ({e}); example: {LIMITS_ENV}='{{\"max_images\": 512}}'")
    if not isinstance(value, dict):
        raise ValueError(f"{LIMITS_ENV} must be a JSON object such as {{\"max_images\": 512}}")
    return value


# ---- decoding -------------------------------------------------------------------------------------------------
def _decode_base64(value: Any, limits: ServingLimits) -> bytes:
    """One request cell -> image bytes; ValueError with the problem (the caller adds the row)."""
    if isinstance(value, bytes):
        text = value
    elif isinstance(value, str):
        text = _DATA_URI.sub("", value.strip(), count=1).encode("ascii", errors="replace")
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        raise ValueError("no image (null); send the image file's bytes as a base64 string")
    else:
        raise ValueError(f"expected a base64 string, got {type(value).__name__}")
    text = _WHITESPACE.sub(b"", text)  # `base64` wraps lines at 76 characters
    if not text:
        raise ValueError("empty string; send the image file's bytes as a base64 string")
    approx = len(text) * 3 // 4  # decoded size, checked before decoding
    if approx > limits.max_image_bytes + 2:
        raise ValueError(f"image is about {approx} bytes, over the cap of {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not valid base64 ({e}); encode the file's bytes, e.g. `base64 -w0 img.png`") from None
    if len(data) > limits.max_image_bytes:
        raise ValueError(f"image is {len(data)} bytes, over the cap of {limits.max_image_bytes} bytes")
    return data


def _pixels01(im) -> Tensor:
    """A decoded PIL image -> (1, C, h, w) float32 in [0, 1]; C = 1 for images without colour, else 3."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":  # 16-bit grey (PNG) arrives as I;16 or I
        arr = np.clip(np.asarray(im, dtype=np.float64) / 65535.0, 0, 1).astype(np.float32)[..., None]
        return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    if mode == "F":
        arr = np.clip(np.asarray(im, dtype=np.float32), 0, 1)[..., None]
        return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    grey = mode in ("1", "L", "LA", "La")
    arr = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)  # (h, w) or (h, w, 3)
    t = torch.from_numpy(arr.copy())
    t = t[None] if grey else t.permute(2, 0, 1)  # (C, h, w)
    return t[None].float().div_(255)  # as ncood.data.registry._prepare widens uint8


def decode_image(data: bytes, limits: ServingLimits) -> Tensor:
    """Image file bytes -> (1, C, h, w) float32 in [0, 1]; ValueError with the problem (the caller adds the row)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data), formats=list(limits.formats))  # reads the header only
    except UnidentifiedImageError:
        raise ValueError(f"not an image PIL can read as {'/'.join(limits.formats)}") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"image has too many pixels ({e})") from None
    w, h = im.size
    if w * h > limits.max_pixels:
        raise ValueError(f"image is {w}x{h} = {w * h} pixels, over the cap of {limits.max_pixels} pixels")
    if w == 0 or h == 0:
        raise ValueError(f"image is {w}x{h}: empty")
    try:
        im.load()  # decodes; truncated or corrupt data fails here (LOAD_TRUNCATED_IMAGES stays False)
        im = ImageOps.exif_transpose(im)
        return _pixels01(im)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ValueError(f"corrupt or truncated {im.format} data ({type(e).__name__}: {e})") from None


def encode_png(pixels: np.ndarray | Tensor) -> str:
    """uint8 pixels (H, W) grey or (H, W, 3) RGB -> base64 of a PNG file (what a client sends)."""
    from PIL import Image

    arr = pixels.cpu().numpy() if isinstance(pixels, Tensor) else np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8 pixels, got {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _rows_message(errors: list[tuple[int, str]], n: int, limit: int = 10) -> str:
    shown = "; ".join(f"row {i}: {msg}" for i, msg in errors[:limit])
    more = f"; ... and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"{len(errors)} of {n} images rejected: {shown}{more}"


def decode_batch(values: Sequence[Any], limits: ServingLimits) -> list[Tensor]:
    """Request cells -> [(1, C, h, w) in [0, 1]]; InputError listing every bad row (0-based)."""
    n = len(values)
    if n == 0:
        raise InputError(f"empty batch: send at least one image in column '{INPUT_COLUMN}'")
    if n > limits.max_images:
        raise InputError(f"too many images: {n} in one request, the cap is {limits.max_images}; split the batch")
    images, errors = [], []
    for row, value in enumerate(values):
        try:
            images.append(decode_image(_decode_base64(value, limits), limits))
        except ValueError as e:
            errors.append((row, str(e)))
    if errors:
        raise InputError(_rows_message(errors, n))
    return images


# ---- the scorer ----------------------------------------------------------------------------------------------
class Scorer:
    """The network, its fitted score states and its preprocessing on the CPU; `score_base64` serves a request."""

    def __init__(self, spec: ScorerSpec, model: nn.Module, states: Mapping[str, Any],
                 limits: ServingLimits | None = None) -> None:
        """states: {fit key: state} of the spec's scores (ncood.ood.unpack_states), "gmm" among them."""
        self.spec, self.limits = spec, limits or spec.limits
        self.info = spec.dataset_info()
        self.model = model.eval()
        missing = sorted({k for n in spec.scores if (k := _fit_key(n)) is not None} - set(states))
        if missing or "gmm" not in spec.scores:
            raise ValueError(f"the scorer package lacks the fitted states {missing or ['gmm']} of its scores "
                             f"{list(spec.scores)}")
        params = resolve_params(spec.scores, spec.score_params)
        self.fit = ScoreFit(tuple(spec.scores), dict(states), params, Head.of(model.classifier))
        self.columns = output_columns(spec.scores)

    @classmethod
    def from_files(cls, spec_path: str | Path, weights_path: str | Path, gaussians_path: str | Path,
                   scores_path: str | Path | None = None,
                   limit_overrides: Mapping[str, Any] | None = None) -> Scorer:
        """scores_path: the packed states of the scores besides gmm (scores.pt; format-1 packages have none)."""
        spec = ScorerSpec.load(spec_path)
        model = create_model(spec.arch, **spec.model_kwargs)
        model.load_state_dict(checkpoint.load(weights_path))
        limits = ServingLimits.from_dict({**spec.limits.to_dict(), **dict(limit_overrides or {})})
        states = unpack_states(checkpoint.load(scores_path)) if scores_path else {}
        return cls(spec, model, {**states, "gmm": ClassGaussians.load(gaussians_path)}, limits)

    def prepare(self, images01: Sequence[Tensor]) -> Tensor:
        """[(1, C_i, h_i, w_i) in [0, 1]] -> (N, *image_shape) normalized: to_model_input image by image (sizes
        differ), the function that prepared the training data."""
        return torch.cat([to_model_input(x, self.info) for x in images01])

    def score(self, x: Tensor) -> dict[str, np.ndarray]:
        """Normalized (N, *image_shape) -> {column: (N,) array} with every response column."""
        out = score_model_input(self.model, self.fit, x, feature_space=self.spec.feature_space)
        cols = {col: out[col].cpu().numpy() for col in score_columns(self.spec.scores)}
        cols["predicted_class"] = np.array([self.spec.class_names[i] for i in out["predicted"].tolist()], dtype=object)
        cols["is_ood"] = cols["gmm_log_density"] < self.spec.threshold
        return cols

    def score_base64(self, values: Sequence[Any]) -> dict[str, np.ndarray]:
        return self.score(self.prepare(decode_batch(values, self.limits)))


def _column(model_input: Any) -> list[Any]:
    """The image column of whatever the scoring server parsed (DataFrame, dict of lists, list, array)."""
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise InputError(f"missing column '{INPUT_COLUMN}' (got columns {list(map(str, model_input.columns))}); "
                             f"send {{\"dataframe_split\": {{\"columns\": [\"{INPUT_COLUMN}\"], \"data\": [[b64], ...]}}}}")
        return model_input[INPUT_COLUMN].tolist()
    if isinstance(model_input, Mapping):
        if INPUT_COLUMN not in model_input:
            raise InputError(f"missing key '{INPUT_COLUMN}' (got {sorted(map(str, model_input))})")
        col = model_input[INPUT_COLUMN]
        return [col] if isinstance(col, (str, bytes)) else list(col)
    if isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
        return list(np.asarray(model_input, dtype=object).reshape(-1))
    raise InputError(f"unsupported input type {type(model_input).__name__}")


# ---- the MLflow pyfunc -------------------------------------------------------------------------------------
class OODScorerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: artifacts 'spec', 'weights', 'gaussians', 'scores' (absent in format 1);
    $NCOOD_SERVING_LIMITS = ServingLimits overrides."""

    def load_context(self, context) -> None:
        # No global torch state is touched here (grad mode, threads): MLflow also loads the model inside the
        # training process to check the input example. Scoring runs under torch.inference_mode.
        a = context.artifacts
        self.scorer = Scorer.from_files(a["spec"], a["weights"], a["gaussians"], a.get("scores"), limits_from_env())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # The pd.DataFrame hint tells MLflow to take the schema from the logged signature, not from type hints.
        try:
            cols = self.scorer.score_base64(_column(model_input))
        except InputError as e:  # the scoring server answers MlflowException with its HTTP code: 400 here
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        except ValueError as e:  # e.g. non-finite scores: a model problem, not the client's
            raise MlflowException(f"scoring failed: {e}", error_code=INTERNAL_ERROR) from None
        return pd.DataFrame(cols, columns=list(self.scorer.columns))
