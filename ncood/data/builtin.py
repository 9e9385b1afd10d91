"""Datasets that need no download: `digits` (the embedded ID default) and the OoD sets `photos`, `letters`,
`scrambled`, `noise`.

- digits: scikit-learn's copy of the UCI optical hand-written digits test set (1797 images, 8x8, values 0..16),
  the data of `sklearn.datasets.load_digits`; small enough to train a width-reduced ResNet on 2 CPU cores (bench/
  measures it).
- photos: crops of scikit-learn's two sample photographs (china.jpg, flower.jpg, the images of
  `sklearn.datasets.load_sample_images`), real natural images that ship offline: the near-OoD set of the embedded
  setup.
- letters: the letters A-J (notMNIST's ten classes, Bulatov 2011) rendered with the scalable font built into
  Pillow >= 10.1 (`ImageFont.load_default(size=...)`, Aileron Regular: no font file needed), each in its own random
  size, stroke weight, slant, rotation, position and ink level, white on black (the polarity of MNIST-like sets):
  a notMNIST-like far-OoD set for grey ID sets. Deterministic by seed for a given Pillow (it bundles its FreeType).
- scrambled: the ID test images with their pixel positions randomly permuted (docs/method.md#ood-sets, "pixel-scrambled").
- noise: Gaussian noise in pixel space (docs/method.md#ood-sets).
All randomness comes from a CPU torch.Generator seeded with `seed`, so a set is the same on every device.

digits and photos are read from the files in scikit-learn's package as its loaders read them (np.loadtxt of the
gzipped CSV; PIL for the JPEGs), without importing scikit-learn: `import sklearn` costs 1.1-1.5 s of CPU (measured,
torch and MLflow already imported), paid by every fresh process that loads the default data (every trial worker of a
sweep, every `ncood train`) for two file reads. tests/test_data.py checks the arrays against scikit-learn's loaders,
bit for bit. A scikit-learn that keeps the files elsewhere gets a SklearnLayoutWarning and its own loaders are used.
"""
from __future__ import annotations

import gzip
import importlib.util
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import torch

from ncood.data.registry import DatasetInfo, IDData, RawImages, register_dataset, stratified_holdout

DIGITS_TEST_FRACTION = 0.2  # digits has no official split: a seeded stratified 20% is the test part
PHOTO_PATCH = 64  # side of a photo crop in pixels; to_model_input then resizes it to the ID size
NOISE_MEAN, NOISE_STD = 0.5, 0.25  # N(0.5, 0.25^2) per pixel, clipped to [0, 1]
LETTERS = "ABCDEFGHIJ"  # notMNIST's classes
LETTER_CANVAS = 56  # rendered at twice the 28 px of MNIST-like sets; to_model_input resizes with antialiasing
# Per-image style ranges (uniform): font size in px (cap height ~0.7x: 20-34 px of 56), stroke width in px
# (0 = regular, 1-2 = bolder), slant (x shift per px of height: -0.3..0.3, italic both ways), rotation in degrees,
# offset of the glyph centre from the canvas centre in px, ink level (notMNIST glyphs are not all white).
LETTER_SIZE, LETTER_STROKE, LETTER_SLANT, LETTER_ROTATION = (28, 48), (0, 2), 0.3, 12.0
LETTER_SHIFT, LETTER_INK = 5, (0.6, 1.0)
_SKLEARN = "ships with scikit-learn (no download, no data root needed)"


class SklearnLayoutWarning(UserWarning):
    """scikit-learn's data files are not where ncood reads them: its own (slower to import) loader is used."""


def sklearn_data_file(*parts: str) -> Path | None:
    """A data file inside the installed scikit-learn package, found without importing it (find_spec locates a
    top-level package without running its __init__); None, with a SklearnLayoutWarning, when this scikit-learn
    keeps it elsewhere (the caller then uses scikit-learn's own loader: same data, its import cost)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the built-in datasets (digits, photos) read their files from scikit-learn's "
                                "package, which is not installed: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations)), "datasets", *parts)
    if path.is_file():
        return path
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = f"scikit-learn {version('scikit-learn')}"
    except PackageNotFoundError:
        installed = "this scikit-learn"
    warnings.warn(f"{installed} at {path.parents[1]} has no datasets/{'/'.join(parts)}, which ncood reads without "
                  f"importing scikit-learn; using scikit-learn's loader instead (the same data, ~1.3 s more per "
                  f"process). A broken install: pip install --force-reinstall scikit-learn; else report the version "
                  f"to ncood", SklearnLayoutWarning, stacklevel=3)
    return None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 0..16, labels (1797,) int64): sklearn.datasets.load_digits' `images` and
    `target`, read as it reads them (the last CSV column is the label)."""
    path = sklearn_data_file("data", "digits.csv.gz")
    if path is None:
        from sklearn.datasets import load_digits as sklearn_load_digits

        digits = sklearn_load_digits()
        return digits.images, digits.target.astype(np.int64)
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")  # (1797, 65)
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = digits_arrays()
    return (images / 16.0).astype(np.float32), labels  # (1797, 8, 8) in [0, 1]; (1797,)


@register_dataset(DatasetInfo(
    name="digits", num_classes=10, can_be_id=True, image_shape=(1, 8, 8),
    description="scikit-learn digits: 1797 grey 8x8 hand-written digits, 10 classes (seeded 72/8/20% split)",
    how_to_get=_SKLEARN,
    default_batch_size=128,  # ~1.3k train images: ~10 steps per epoch
    default_ood=("photos", "scrambled", "noise"),
    # Statistics of the split_seed=0 train part, computed once (tests/test_data.py re-checks them). Dataset
    # statistics rather than (0.5, 0.5): digits are mostly background (mean ~0.3), and unit-variance inputs
    # are what the CIFAR recipe gives its networks too.
    mean=(0.3057,), std=(0.3765,),
    crop_pad=1,  # 1/8 of the side, as 4 px is of 32 (CIFAR); 4 px would shift a digit by half the image
    flip=False,  # a mirrored digit is a different symbol (or none)
))
def load_digits(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    images, labels = _digits()
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(labels)  # (1797, 1, 8, 8) float01, (1797,)
    train, test = stratified_holdout(y, DIGITS_TEST_FRACTION, seed)
    idx = train if split == "train" else test
    return RawImages(x[idx], y[idx], [str(i) for i in range(10)])


def _ood_only(name: str, like: IDData | None) -> IDData:
    if like is None:
        raise ValueError(f"{name!r} is an OoD set generated for an ID set: pass like=<IDData>")
    return like


def sample_photo_arrays() -> list[np.ndarray]:
    """sklearn.datasets.load_sample_images' `images`: its package's JPEGs in name order (china, flower), each
    decoded by PIL to a (427, 640, 3) uint8 array."""
    from PIL import Image

    china = sklearn_data_file("images", "china.jpg")
    if china is None:
        from sklearn.datasets import load_sample_images

        return list(load_sample_images().images)
    out = []
    for path in sorted(china.parent.glob("*.jpg")):
        with Image.open(path) as im:
            out.append(np.asarray(im))
    return out


@cache
def _sample_photos() -> torch.Tensor:
    photos = np.stack(sample_photo_arrays())  # (2, 427, 640, 3) uint8
    return torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous()  # (2, 3, 427, 640)


@register_dataset(DatasetInfo(
    name="photos", num_classes=None, can_be_id=False, image_shape=(3, PHOTO_PATCH, PHOTO_PATCH),
    description=f"{PHOTO_PATCH}x{PHOTO_PATCH} random crops of scikit-learn's sample photographs (china, flower); "
                "as many as the ID test set",
    how_to_get=_SKLEARN,
))
def load_photos(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    n = len(_ood_only("photos", like).test)
    photos = _sample_photos()
    _, c, h, w = photos.shape
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(photos), (n,), generator=g)
    top = torch.randint(h - PHOTO_PATCH + 1, (n,), generator=g)
    left = torch.randint(w - PHOTO_PATCH + 1, (n,), generator=g)
    offs = torch.arange(PHOTO_PATCH)
    rows = (top[:, None] + offs)[:, None, :, None]  # (n, 1, P, 1)
    cols = (left[:, None] + offs)[:, None, None, :]  # (n, 1, 1, P)
    crops = photos[which[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]  # (n, 3, P, P)
    return RawImages(crops)


@cache
def _font(size: int):
    from PIL import ImageFont, features

    if not features.check("freetype2"):
        raise RuntimeError("the letters OoD set needs Pillow built with FreeType (the PyPI wheels are): "
                           "pip install --force-reinstall 'pillow>=10.1'")
    return ImageFont.load_default(size=size)  # Pillow >= 10.1: the built-in scalable font (Aileron Regular)


def _render_letter(char: str, size: int, stroke: int, slant: float, angle: float, shift: tuple[int, int]):
    """One white-on-black glyph as a (LETTER_CANVAS, LETTER_CANVAS) uint8 array."""
    from PIL import Image, ImageDraw

    side, centre = LETTER_CANVAS, LETTER_CANVAS / 2
    img = Image.new("L", (side, side), 0)
    ImageDraw.Draw(img).text((centre + shift[0], centre + shift[1]), char, fill=255, font=_font(size),
                             anchor="mm", stroke_width=stroke, stroke_fill=255)
    # slant about the centre row: output (x, y) reads input (x + slant * (y - centre), y)
    img = img.transform((side, side), Image.AFFINE, (1, slant, -slant * centre, 0, 1, 0), Image.BILINEAR)
    return np.asarray(img.rotate(angle, Image.BILINEAR))


@register_dataset(DatasetInfo(
    name="letters", num_classes=None, can_be_id=False, image_shape=(1, LETTER_CANVAS, LETTER_CANVAS),
    description=f"notMNIST-like: the letters {LETTERS[0]}-{LETTERS[-1]} in Pillow's built-in font at random "
                "sizes, weights, slants, rotations, positions and ink levels, white on black; as many as the ID "
                "test set",
    how_to_get="generated with Pillow's built-in font (no download, no data root needed)",
))
def load_letters(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    n = len(_ood_only("letters", like).test)
    g = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> list[float]:
        return (low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)).tolist()

    chars = torch.randint(len(LETTERS), (n,), generator=g).tolist()
    sizes = torch.randint(LETTER_SIZE[0], LETTER_SIZE[1] + 1, (n,), generator=g).tolist()
    strokes = torch.randint(LETTER_STROKE[0], LETTER_STROKE[1] + 1, (n,), generator=g).tolist()
    slants, angles = uniform(-LETTER_SLANT, LETTER_SLANT), uniform(-LETTER_ROTATION, LETTER_ROTATION)
    shifts = torch.randint(-LETTER_SHIFT, LETTER_SHIFT + 1, (n, 2), generator=g).tolist()
    ink = torch.tensor(uniform(*LETTER_INK))
    glyphs = np.stack([_render_letter(LETTERS[c], *style)  # PIL draws one glyph at a time
                       for c, *style in zip(chars, sizes, strokes, slants, angles, map(tuple, shifts))])
    x = torch.from_numpy(glyphs)[:, None].float() * ink[:, None, None, None]  # (n, 1, 56, 56) in 0..255
    return RawImages(x.round_().to(torch.uint8))


@register_dataset(DatasetInfo(
    name="scrambled", num_classes=None, can_be_id=False, image_shape=None,
    description="the ID test images, each with its own seeded random permutation of pixel positions "
                "(channels move together)",
    how_to_get="generated from the ID test set",
))
def load_scrambled(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    like = _ood_only("scrambled", like)
    mean = torch.tensor(like.info.mean, device=like.test.x.device)[None, :, None, None]
    std = torch.tensor(like.info.std, device=like.test.x.device)[None, :, None, None]
    x01 = (like.test.x * std + mean).clamp_(0, 1)  # back to pixel space: (N, C, H, W)
    n, c, h, w = x01.shape
    g = torch.Generator().manual_seed(seed)
    perm = torch.rand(n, h * w, generator=g).argsort(dim=1).to(x01.device)  # (N, HW): one permutation per image
    scrambled = x01.flatten(2).gather(2, perm[:, None, :].expand(-1, c, -1))  # (N, C, HW)
    return RawImages(scrambled.view(n, c, h, w))


@register_dataset(DatasetInfo(
    name="noise", num_classes=None, can_be_id=False, image_shape=None,
    description=f"Gaussian noise N({NOISE_MEAN}, {NOISE_STD}^2) per pixel, clipped to [0, 1], in the ID shape; "
                "as many as the ID test set",
    how_to_get="generated",
))
def load_noise(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    like = _ood_only("noise", like)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((len(like.test), *like.image_shape), generator=g)  # (N, C, H, W)
    return RawImages((NOISE_MEAN + NOISE_STD * x).clamp_(0, 1))
