"""The papers' downloadable sets (seed paper Sec. 3; TMLR 2024 Tables 1-7), loaded the standard way from a data root.
Every one can be the ID set (TMLR 2024 trains on CIFAR-10, CIFAR-100, Tiny ImageNet and GTSRB) and every one can be
an OoD set of another; all are 32x32 RGB model inputs with CIFAR-10 normalization (DDU's code does so for every set;
the papers state no normalization: docs/method.md#normalization).

- cifar10, cifar100: torchvision.datasets.CIFAR10 / CIFAR100, python-pickle batches
  (https://www.cs.toronto.edu/~kriz/cifar.html). CIFAR-100 as ID: TMLR Table 7 (OoD SVHN, CIFAR-10, Tiny ImageNet).
- svhn (far OoD): torchvision.datasets.SVHN, `test_32x32.mat` (26,032 images; http://ufldl.stanford.edu/housenumbers/).
(Tiny ImageNet, the fifth, has no torchvision class: ncood.data.tiny_imagenet.)
- gtsrb: torchvision.datasets.GTSRB, the German Traffic Sign Recognition Benchmark, 43 classes (TMLR Table 5; OoD
  SVHN, CIFAR-100, Tiny ImageNet). Its images range from 15x15 to 250x250 pixels; the paper gives no input size, so
  resizing each to 32x32 (antialiased bilinear, as `to_model_input`) while loading is ncood's choice.
torchvision verifies each file against its own md5 table and raises RuntimeError("Dataset not found or corrupted");
we turn that into DatasetNotFoundError naming every file looked at and its state (missing / checksum mismatch).
"""
from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch

from ncood.data.registry import (
    DatasetInfo, DatasetNotFoundError, IDData, RawImages, check_integrity, register_dataset, require_files,
    resize_images, torchvision_datasets,
)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # docs/method.md#normalization: used for every dataset of the CIFAR benchmark
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
_NETWORK_ERRORS = (URLError, ConnectionError, TimeoutError)
# The CIFAR recipe (docs/method.md#augmentation): batch 1024 (the papers'), 4-pixel zero padding (in pixel space) +
# crop and h-flip (DDU's code; the papers state no augmentation).
CIFAR_RECIPE = dict(  # also Tiny ImageNet's and GTSRB's (TMLR A.1 gives no other)
    mean=CIFAR10_MEAN, std=CIFAR10_STD, default_batch_size=1024, crop_pad=4)
_GENERATED = ("noise", "scrambled")
_FAR_AND_GENERATED = ("tinyimagenet", *_GENERATED)
# torchvision's CIFAR10/CIFAR100 `url` and `base_folder`, spelled here so that registering the sets does not import
# torchvision (registry.torchvision_datasets); tests/test_data.py checks them against torchvision's classes.
CIFAR_SOURCES = {
    "CIFAR10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "CIFAR100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}


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


def _cifar_files(class_name: str, root: Path) -> list[tuple[Path, str]]:
    """(path, md5) of every file torchvision's CIFAR10 / CIFAR100 checks (both parts: it checks all of them)."""
    cls = getattr(torchvision_datasets(), class_name)
    # read the md5 tables at call time: they are torchvision's (tests swap in the md5s of their fake files)
    folder = root / cls.base_folder
    return [(folder / f, md5) for f, md5 in cls.train_list + cls.test_list] + [
        (folder / cls.meta["filename"], cls.meta["md5"])]


def _cifar_loader(class_name: str, name: str):
    """One loader for torchvision's CIFAR10 and its subclass CIFAR100 (same pickle format, different tables)."""

    def load(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
        cls = getattr(torchvision_datasets(), class_name)
        ds = _construct(name, root, _cifar_files(class_name, root),
                        lambda: cls(str(root), train=split == "train", download=download))
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32) uint8
        return RawImages(x, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes))

    return load


def _parts(as_id: bool) -> tuple[str, ...]:
    """The parts a loader reads: ID use the train and test parts, OoD use the test part (load_ood)."""
    return ("train", "test") if as_id else ("test",)


register_dataset(DatasetInfo(
    name="cifar10", num_classes=10, can_be_id=True, image_shape=(3, 32, 32),
    description="CIFAR-10: 50k train (45k/5k train/val, seeded stratified) + 10k test, 32x32 RGB, 10 classes",
    how_to_get=f"download=True fetches {CIFAR_SOURCES['CIFAR10'][0]} into the data root and extracts it to "
               f"<data-root>/{CIFAR_SOURCES['CIFAR10'][1]}/; or download and extract that archive there yourself.",
    default_ood=("svhn", "cifar100") + _FAR_AND_GENERATED, flip=True, **CIFAR_RECIPE,
), files=lambda root, as_id: _cifar_files("CIFAR10", root))(_cifar_loader("CIFAR10", "cifar10"))

register_dataset(DatasetInfo(
    name="cifar100", num_classes=100, can_be_id=True, image_shape=(3, 32, 32),
    description="CIFAR-100: 50k train (45k/5k train/val, seeded stratified) + 10k test, 32x32 RGB, 100 fine "
                "classes; ID in TMLR Table 7, near OoD for CIFAR-10 (test set)",
    how_to_get=f"download=True fetches {CIFAR_SOURCES['CIFAR100'][0]} into the data root and extracts it to "
               f"<data-root>/{CIFAR_SOURCES['CIFAR100'][1]}/; or download and extract that archive there yourself.",
    default_ood=("svhn", "cifar10") + _FAR_AND_GENERATED, flip=True, **CIFAR_RECIPE,
), files=lambda root, as_id: _cifar_files("CIFAR100", root))(_cifar_loader("CIFAR100", "cifar100"))


@register_dataset(DatasetInfo(
    name="svhn", num_classes=10, can_be_id=True, image_shape=(3, 32, 32),
    description="SVHN cropped digits: 73,257 train + 26,032 test, 32x32 RGB (label 10 -> digit 0); far OoD",
    how_to_get="download=True fetches http://ufldl.stanford.edu/housenumbers/{train,test}_32x32.mat into the "
               "data root itself (torchvision's layout: <data-root>/test_32x32.mat).",
    default_ood=("cifar10", "cifar100") + _FAR_AND_GENERATED,
    flip=False,  # mirrored house numbers change meaning
    **CIFAR_RECIPE,
), files=lambda root, as_id: _svhn_files(root, _parts(as_id)))
def load_svhn(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    datasets = torchvision_datasets()
    ds = _construct("svhn", root, _svhn_files(root, (split,)),
                    lambda: datasets.SVHN(str(root), split=split, download=download))
    x = torch.from_numpy(np.ascontiguousarray(ds.data))  # (N, 3, 32, 32) uint8 (torchvision transposed the .mat)
    return RawImages(x, torch.from_numpy(ds.labels).long(), [str(i) for i in range(10)])


def _svhn_files(root: Path, splits: tuple[str, ...]) -> list[tuple[Path, str]]:
    """(path, md5) of torchvision's SVHN .mat file of each split."""
    table = torchvision_datasets().SVHN.split_list  # {split: (url, filename, md5)}
    return [(root / table[s][1], table[s][2]) for s in splits]


def _gtsrb_files(root: Path, splits: tuple[str, ...]) -> list[tuple[Path, None]]:
    """What each split of torchvision's GTSRB layout needs under <root>/gtsrb (folders and the test labels)."""
    base = root / "gtsrb"
    parts = {"train": [base / "GTSRB" / "Training"],
             "test": [base / "GTSRB" / "Final_Test" / "Images", base / "GT-final_test.csv"]}
    return [(path, None) for s in splits for path in parts[s]]


GTSRB_SIDE = 32  # ncood's choice, the CIFAR models' input: TMLR 2024 (Table 5) gives no image size for GTSRB
GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"  # torchvision's source


@register_dataset(DatasetInfo(
    name="gtsrb", num_classes=43, can_be_id=True, image_shape=(3, GTSRB_SIDE, GTSRB_SIDE),
    description="GTSRB traffic signs: 39,209 train (35,288/3,921 train/val, seeded stratified) + 12,630 test photos "
                "of 15x15 to 250x250 pixels, 43 classes, resized to 32x32 RGB",
    how_to_get=f"download=True fetches GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip and "
               f"GTSRB_Final_Test_GT.zip from {GTSRB_URL} into <data-root>/gtsrb/ (torchvision's GTSRB); or unzip "
               f"them there yourself so that <data-root>/gtsrb/GTSRB/Training/00000/*.ppm, "
               f"<data-root>/gtsrb/GTSRB/Final_Test/Images/*.ppm and <data-root>/gtsrb/GT-final_test.csv exist.",
    default_ood=("svhn", "cifar100", *_FAR_AND_GENERATED),
    flip=False,  # mirrored signs change meaning (keep left / keep right, turn left / turn right)
    **CIFAR_RECIPE,
), files=lambda root, as_id: _gtsrb_files(root, _parts(as_id)))
def load_gtsrb(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    files = _gtsrb_files(root, (split,))
    if not download:
        require_files("gtsrb", root, files)  # torchvision checks the image folder only
    ds = _construct("gtsrb", root, files,
                    lambda: torchvision_datasets().GTSRB(str(root), split=split, download=download))
    if split == "train":  # torchvision numbers the class folders it finds: all 43 must be there
        training = files[0][0]  # <root>/gtsrb/GTSRB/Training
        found = sorted(p.name for p in training.iterdir() if p.is_dir())
        if found != [f"{c:05d}" for c in range(43)]:
            raise DatasetNotFoundError.build("gtsrb", root, files, detail=(
                f"{training} holds {len(found)} class folders, expected the 43 folders 00000 ... 00042 "
                f"(an incomplete extraction?)."))
    x = torch.empty((len(ds), 3, GTSRB_SIDE, GTSRB_SIDE))  # (N, 3, 32, 32) float in [0, 1]
    y = torch.empty(len(ds), dtype=torch.int64)
    for i in range(len(ds)):  # PIL decodes one image at a time anyway; the sizes differ, so resize each
        img, y[i] = ds[i]
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # (3, h, w) uint8, a copy
        x[i] = resize_images(pixels[None].float() / 255, (GTSRB_SIDE, GTSRB_SIDE))[0]
    return RawImages(x, y, [f"{c:02d}" for c in range(43)])
