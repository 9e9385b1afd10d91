"""Request decoding and validation of the served OoD scorer: base64 image cells -> (1, C, h, w) float in [0, 1].

One request row is one image (PNG, JPEG, WebP, BMP or GIF bytes, base64), decoded as the training and OoD
evaluation data were prepared (ncood.data.registry):

    PIL decode (first frame, EXIF rotation applied) -> "L" if the image has no colour, else "RGB" (alpha dropped,
    palettes expanded, 16-bit grey scaled by 1/65535) -> float in [0, 1], (1, C, h, w)

PIL does the decoding; what is written here is the validation in front of it (caps on rows, bytes and pixels
checked before decoding, one error naming every bad row), which no library offers for MLflow's request cells.
Bad input (not base64, not an image, truncated, over the byte or pixel cap, empty batch, too many images, missing
column) raises `InputError` naming the rows and the problem; the pyfunc wrapper (ncood.serve.pyfunc) turns it into
an `MlflowException(INVALID_PARAMETER_VALUE)`, which MLflow's scoring server returns as HTTP 400.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

INPUT_COLUMN = "image"
LIMITS_ENV = "NCOOD_SERVING_LIMITS"
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
def _raise_cap(field: str, needed: int) -> str:
    """The fix for an image over a serving cap: what the client can do, and the server's setting."""
    return (f"downscale or recompress it, or start the server with {LIMITS_ENV}='{{\"{field}\": {needed}}}' "
            "(deploy/serving/README.md)")


_NULL_TEXTS = (b"None", b"nan", b"NaN", b"null")  # how a null cell reads once made a string (str(None), NaN)


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
    if text in _NULL_TEXTS:  # valid base64 of 3 bytes, which no image is: a null that became text on its way here
        raise ValueError(f"no image ({text.decode()!r}: a JSON null, which MLflow's `inputs` form turns into this "
                         "string); send the image file's bytes as a base64 string")
    approx = len(text) * 3 // 4  # decoded size, checked before decoding
    if approx > limits.max_image_bytes + 2:
        raise ValueError(f"image is about {approx} bytes, over the cap of {limits.max_image_bytes} bytes; "
                         f"{_raise_cap('max_image_bytes', approx)}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not valid base64 ({e}); encode the file's bytes, e.g. `base64 -w0 img.png`") from None
    if len(data) > limits.max_image_bytes:
        raise ValueError(f"image is {len(data)} bytes, over the cap of {limits.max_image_bytes} bytes; "
                         f"{_raise_cap('max_image_bytes', len(data))}")
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
    target = "L" if mode in ("1", "L", "LA", "La") else "RGB"
    # (h, w) or (h, w, 3) uint8 pixels widened to a new float32 array in one step (an image already in the target
    # mode is not converted: PIL's convert would copy it)
    arr = np.asarray(im if mode == target else im.convert(target), dtype=np.float32)
    t = torch.from_numpy(arr).div_(255)  # as ncood.data.registry._prepare widens uint8: float32(v) / 255
    t = t[None] if target == "L" else t.permute(2, 0, 1)  # (C, h, w)
    return t[None]


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
        raise ValueError(f"image is {w}x{h} = {w * h} pixels, over the cap of {limits.max_pixels} pixels; "
                         f"{_raise_cap('max_pixels', w * h)}")
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


def request_column(model_input: Any) -> list[Any]:
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

