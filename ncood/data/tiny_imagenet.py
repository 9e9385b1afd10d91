"""Tiny ImageNet (cs231n, Stanford: 200 ImageNet classes, 64x64 JPEGs), as ID set and as near-OoD set.

There is no torchvision class for it, so this reads the standard zip layout (http://cs231n.stanford.edu/
tiny-imagenet-200.zip): `tiny-imagenet-200/wnids.txt` (the 200 class ids), `train/<wnid>/images/*.JPEG` (500 per
class) and `val/images/val_<i>.JPEG` listed with their class in `val/val_annotations.txt` (10,000 images; the
official test split has no labels, so the validation split is the test set here, as usual).

- As OoD (seed paper Table 1, TMLR 2024 Tables 2-4): the 10,000 validation images, resized to the ID set's 32x32
  (neither paper states a size: ncood's choice, the CIFAR input size).
- As ID (TMLR 2024 Table 6: "trained on TinyImageNet", OoD SVHN and CIFAR-100): the 100k train images (minus a
  seeded 10% validation hold-out) and the labelled validation images as test set, at 32x32. The paper does not
  say which size it trained at; we use 32x32 because (1) its batch sizes only fit that reading: A.1 says 1024
  did not fit ResNet50 on 32x32 CIFAR-10 (768 did) yet ResNet50 ran at 512 on Tiny ImageNet, which at 64x64
  would need the activation memory of ~2048 32x32 images; (2) the papers' Tiny ImageNet OoD set is 32x32
  already; (3) its OoD sets (SVHN, CIFAR-100) are 32x32. Classes are numbered in sorted-wnid order.
Images are returned at 64x64 (uint8); `to_model_input` resizes them to 32x32 (antialiased bilinear), the same
function the OoD use and the REST server go through. Some JPEGs are greyscale: convert("RGB") repeats the channel.
"""
from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image

from ncood.data.registry import (DatasetInfo, DatasetNotFoundError, IDData, RawImages, register_dataset,
                                 require_files)
from ncood.data.torchvision_sets import CIFAR_RECIPE

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # of the zip, as used by public TinyImageNet loaders
TINY_SIDE, TINY_TARGET, TINY_CLASSES = 64, 32, 200  # native side; 32x32 (ncood's choice, above); classes


def _files(root: Path, labelled: bool) -> list[tuple[Path, None]]:
    """What the loader checks first: the validation list, and for ID use (labelled) the class ids too; OoD use
    reads only the validation images."""
    base = root / "tiny-imagenet-200"
    return [(base / "val" / "val_annotations.txt", None)] + ([(base / "wnids.txt", None)] if labelled else [])


@register_dataset(DatasetInfo(
    name="tinyimagenet", num_classes=TINY_CLASSES, can_be_id=True, image_shape=(3, TINY_TARGET, TINY_TARGET),
    description="Tiny ImageNet: 100k train (90k/10k train/val, seeded stratified) + 10k validation images as test "
                "set, 64x64 JPEGs of 200 ImageNet classes resized to 32x32; near OoD for CIFAR-10 (validation set)",
    how_to_get=f"download=True fetches {TINY_URL} (237 MB) and extracts it into the data root; or unzip it there "
               f"yourself so that <data-root>/tiny-imagenet-200/wnids.txt, <data-root>/tiny-imagenet-200/train/"
               f"<wnid>/images/*.JPEG, <data-root>/tiny-imagenet-200/val/images/val_0.JPEG and "
               f"<data-root>/tiny-imagenet-200/val/val_annotations.txt exist.",
    default_ood=("svhn", "cifar100", "noise", "scrambled"),  # TMLR Table 6: SVHN, CIFAR-100
    flip=True, **CIFAR_RECIPE,
), files=_files)
def load_tinyimagenet(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    base = root / "tiny-imagenet-200"
    annotations, wnids_file = base / "val" / "val_annotations.txt", base / "wnids.txt"
    labelled = like is None  # ID use needs the classes; OoD use only the validation images
    files = _files(root, labelled)
    if download and not all(path.exists() for path, _ in files):
        from torchvision.datasets.utils import download_and_extract_archive  # lazily: registry.torchvision_datasets

        try:
            download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5)
        except (URLError, ConnectionError, TimeoutError) as err:
            raise DatasetNotFoundError.build("tinyimagenet", root, files, detail=f"Download failed: {err}") from err
    require_files("tinyimagenet", root, files)
    if split == "train":
        wnids = _wnids(wnids_file, root)
        paths, labels = [], []
        for label, wnid in enumerate(wnids):
            folder = base / "train" / wnid / "images"
            found = sorted(folder.glob("*.JPEG"))
            if not found:
                raise DatasetNotFoundError.build("tinyimagenet", root, [(folder, None)], detail=(
                    f"No training images for class {wnid} (an incomplete extraction?)."))
            paths += found
            labels += [label] * len(found)
    else:
        rows = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip()]
        paths = [base / "val" / "images" / name for name, _ in rows]
        index = {w: i for i, w in enumerate(_wnids(wnids_file, root))} if labelled else {}
        labels = [index[wnid] for _, wnid in rows] if labelled else []
    images = np.empty((len(paths), TINY_SIDE, TINY_SIDE, 3), dtype=np.uint8)
    for i, path in enumerate(paths):  # decoding is per file anyway; everything after is batched
        images[i] = _read_jpeg(path, root)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, 64, 64) uint8; to_model_input resizes to 32
    if not labelled:
        return RawImages(x)
    return RawImages(x, torch.tensor(labels, dtype=torch.int64), _wnids(wnids_file, root))


def _wnids(path: Path, root: Path) -> list[str]:
    """The 200 class ids in sorted order (label i = the i-th)."""
    wnids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    if len(wnids) != TINY_CLASSES:
        raise DatasetNotFoundError.build("tinyimagenet", root, [(path, None)], detail=(
            f"{path} lists {len(wnids)} classes, expected {TINY_CLASSES}."))
    return wnids


def _read_jpeg(path: Path, root: Path) -> np.ndarray:
    """One 64x64 image as (64, 64, 3) uint8; some Tiny ImageNet JPEGs are greyscale: convert("RGB") repeats them.

    A listed file that is missing means an incomplete extraction; one that cannot be decoded is an error naming the
    file (never skipped: a silently smaller set would change the reported metrics).
    """
    if not path.is_file():
        raise DatasetNotFoundError.build("tinyimagenet", root, [(path, None)], detail="A listed image is missing.")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))  # convert() forces the full decode: truncation raises here
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"tinyimagenet: cannot decode image {path}: {err}") from err
    if arr.shape != (TINY_SIDE, TINY_SIDE, 3):
        raise OSError(f"tinyimagenet: image {path} is {arr.shape[1]}x{arr.shape[0]}, expected 64x64")
    return arr
