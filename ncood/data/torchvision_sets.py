"""The CIFAR-10 benchmark sets (REFERENCE.md sections 3 and 5), loaded the standard way from a data root.

- cifar10 (ID), cifar100 (near OoD): torchvision.datasets.CIFAR10 / CIFAR100, python-pickle batches
  (https://www.cs.toronto.edu/~kriz/cifar.html).
- svhn (far OoD): torchvision.datasets.SVHN, `test_32x32.mat` (26,032 images; http://ufldl.stanford.edu/housenumbers/).
- tinyimagenet (near OoD): the 10,000 validation images of cs231n's Tiny ImageNet (64x64 JPEG), resized to 32x32
  as in the L2-normalization papers; there is no torchvision class, so we read the standard zip layout
  `tiny-imagenet-200/val/images/val_<i>.JPEG` listed in `tiny-imagenet-200/val/val_annotations.txt`.
torchvision verifies each file against its own md5 table and raises RuntimeError("Dataset not found or corrupted");
we turn that into DatasetNotFoundError naming every file looked at and its state (missing / checksum mismatch).
"""
from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from ncood.data.registry import (
    DatasetInfo, DatasetNotFoundError, IDData, RawImages, register_dataset, resize_images,
)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # REFERENCE.md 3: used for every dataset of the CIFAR benchmark
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
_NETWORK_ERRORS = (URLError, ConnectionError, TimeoutError)
# The papers' CIFAR recipe (REFERENCE.md 3): batch 1024, 4-pixel zero padding (in pixel space) + crop, h-flip.
_CIFAR_RECIPE = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, default_batch_size=1024, crop_pad=4)
_FAR_AND_GENERATED = ("tinyimagenet", "noise", "scrambled")


def _construct(name: str, root: Path, files: list[tuple[Path, str | None]], make):
    """Call a torchvision constructor; missing/corrupt files or a failed download -> DatasetNotFoundError."""
    try:
        return make()
    except _NETWORK_ERRORS as err:  # download=True without a network
        raise DatasetNotFoundError.build(name, root, files, detail=f"Download failed: {err}") from err
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        if all(check_integrity(path, md5) for path, md5 in files):
            raise  # the files are fine: a different problem, keep torchvision's error
        raise DatasetNotFoundError.build(name, root, files) from err


def _cifar_loader(cls: type[datasets.CIFAR10], name: str):
    """One loader for CIFAR10 and its subclass CIFAR100 (same pickle format, different tables)."""

    def load(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
        # read the md5 tables at call time: they are torchvision's (tests swap in the md5s of their fake files)
        folder = root / cls.base_folder
        files = [(folder / f, md5) for f, md5 in cls.train_list + cls.test_list]
        files.append((folder / cls.meta["filename"], cls.meta["md5"]))
        ds = _construct(name, root, files, lambda: cls(str(root), train=split == "train", download=download))
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32) uint8
        return RawImages(x, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes))

    return load


register_dataset(DatasetInfo(
    name="cifar10", num_classes=10, can_be_id=True, image_shape=(3, 32, 32),
    description="CIFAR-10: 50k train (45k/5k train/val, seeded stratified) + 10k test, 32x32 RGB, 10 classes",
    how_to_get=f"download=True fetches {datasets.CIFAR10.url} into the data root and extracts it to "
               f"<data-root>/{datasets.CIFAR10.base_folder}/; or download and extract that archive there yourself.",
    default_ood=("svhn", "cifar100") + _FAR_AND_GENERATED, flip=True, **_CIFAR_RECIPE,
))(_cifar_loader(datasets.CIFAR10, "cifar10"))

register_dataset(DatasetInfo(
    name="cifar100", num_classes=100, can_be_id=True, image_shape=(3, 32, 32),
    description="CIFAR-100: 50k train + 10k test, 32x32 RGB, 100 fine classes; near OoD for CIFAR-10 (test set)",
    how_to_get=f"download=True fetches {datasets.CIFAR100.url} into the data root and extracts it to "
               f"<data-root>/{datasets.CIFAR100.base_folder}/; or download and extract that archive there yourself.",
    default_ood=("svhn", "cifar10") + _FAR_AND_GENERATED, flip=True, **_CIFAR_RECIPE,
))(_cifar_loader(datasets.CIFAR100, "cifar100"))


@register_dataset(DatasetInfo(
    name="svhn", num_classes=10, can_be_id=True, image_shape=(3, 32, 32),
    description="SVHN cropped digits: 73,257 train + 26,032 test, 32x32 RGB (label 10 -> digit 0); far OoD",
    how_to_get="download=True fetches http://ufldl.stanford.edu/housenumbers/{train,test}_32x32.mat into the "
               "data root itself (torchvision's layout: <data-root>/test_32x32.mat).",
    default_ood=("cifar10", "cifar100") + _FAR_AND_GENERATED,
    flip=False,  # mirrored house numbers change meaning
    **_CIFAR_RECIPE,
))
def load_svhn(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    _, filename, md5 = datasets.SVHN.split_list[split]
    files = [(root / filename, md5)]
    ds = _construct("svhn", root, files, lambda: datasets.SVHN(str(root), split=split, download=download))
    x = torch.from_numpy(np.ascontiguousarray(ds.data))  # (N, 3, 32, 32) uint8 (torchvision transposed the .mat)
    return RawImages(x, torch.from_numpy(ds.labels).long(), [str(i) for i in range(10)])


TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # of the zip, as used by public TinyImageNet loaders
TINY_SIDE, TINY_TARGET = 64, 32  # native side; the papers resize to CIFAR's 32x32


@register_dataset(DatasetInfo(
    name="tinyimagenet", num_classes=None, can_be_id=False, image_shape=(3, TINY_TARGET, TINY_TARGET),
    description="Tiny ImageNet validation set: 10,000 64x64 JPEGs of 200 ImageNet classes, resized to 32x32 "
                "(antialiased bilinear); near OoD for CIFAR-10",
    how_to_get=f"download=True fetches {TINY_URL} (237 MB) and extracts it into the data root; or unzip it there "
               f"yourself so that <data-root>/tiny-imagenet-200/val/images/val_0.JPEG and "
               f"<data-root>/tiny-imagenet-200/val/val_annotations.txt exist.",
))
def load_tinyimagenet(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    val = root / "tiny-imagenet-200" / "val"
    annotations = val / "val_annotations.txt"
    files = [(annotations, None)]
    if download and not annotations.exists():
        try:
            download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5)
        except _NETWORK_ERRORS as err:
            raise DatasetNotFoundError.build("tinyimagenet", root, files, detail=f"Download failed: {err}") from err
    if not annotations.exists():
        raise DatasetNotFoundError.build("tinyimagenet", root, files)
    names = [line.split("\t")[0] for line in annotations.read_text().splitlines() if line.strip()]
    images = np.empty((len(names), TINY_SIDE, TINY_SIDE, 3), dtype=np.uint8)
    for i, name in enumerate(names):  # decoding is per file anyway; everything after is batched
        images[i] = _read_jpeg(val / "images" / name, root)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, 64, 64) uint8
    out = torch.empty((len(x), 3, TINY_TARGET, TINY_TARGET))  # (N, 3, 32, 32) float in [0, 1]
    for i in range(0, len(x), 2048):
        out[i:i + 2048] = resize_images(x[i:i + 2048].float() / 255, (TINY_TARGET, TINY_TARGET))
    return RawImages(out)


def _read_jpeg(path: Path, root: Path) -> np.ndarray:
    """One 64x64 image as (64, 64, 3) uint8; some Tiny ImageNet JPEGs are greyscale: convert("RGB") repeats them.

    A listed file that is missing means an incomplete extraction; one that cannot be decoded is an error naming the
    file (never skipped: a silently smaller OoD set would change the reported metrics).
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
