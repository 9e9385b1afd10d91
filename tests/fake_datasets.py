"""Small stand-ins for the downloaded datasets, written in their true on-disk formats (no network needed).

- CIFAR-10 / CIFAR-100 "python version": pickled dicts as the originals were written by Python 2: keys and label
  names are Python 2 `str` (pickle opcodes SHORT_BINSTRING/BINSTRING), so they load as `str` with
  encoding="latin1" (torchvision) and as bytes (b'data', b'labels') with encoding="bytes" (the CIFAR web page's
  snippet); b'data' is (N, 3072) uint8, rows = 1024 R, 1024 G, 1024 B values in row-major order.
- SVHN: `test_32x32.mat` / `train_32x32.mat` (MATLAB 5 via scipy.io.savemat): 'X' (32, 32, 3, N) uint8 and
  'y' (N, 1) with labels 1..10 (10 is digit 0).
- Tiny ImageNet: `tiny-imagenet-200/val/images/val_<i>.JPEG` (64x64, a few greyscale as in the real set) and
  `val/val_annotations.txt` (file, wnid, box), `wnids.txt` (200 ids) and `train/<wnid>/images/*.JPEG`.
- GTSRB: the official zips' layout (PPM images of varying size, ';'-separated GT csv files), see write_gtsrb.
Images are class-coloured noise, so a network can learn them (smoke tests), and values are checkable.

torchvision checks its datasets against a table of md5s of the real files; `accept_fake_checksums` puts the
md5s of these fake files into that table (through pytest's monkeypatch), so the tests run the real torchvision
classes end to end and only the checksum table, which is data and not code under test, is replaced.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import datasets
from torchvision.datasets.utils import calculate_md5


class Py2Str(str):
    """A string that pickles as a Python 2 `str` (bytes-like), as in the original CIFAR files."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: Py2Str) -> None:
        data = obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str


def _py2(obj):
    """Recursively mark dict keys and string values as Python 2 strings."""
    if isinstance(obj, dict):
        return {Py2Str(k): _py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    return Py2Str(obj) if isinstance(obj, str) else obj


def _dump_py2(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(obj))


def class_images(labels: np.ndarray, num_classes: int, side: int = 32, seed: int = 0) -> np.ndarray:
    """(N, side, side, 3) uint8: a per-class colour plus uniform noise of +-40."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(num_classes, 3))
    noise = rng.integers(-40, 41, size=(len(labels), side, side, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % num_classes)


def _cifar_rows(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """(N, 3072) uint8 in CIFAR's channel-major row layout."""
    return class_images(labels, num_classes, seed=seed).transpose(0, 3, 1, 2).reshape(len(labels), 3072)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> list[Path]:
    folder = Path(root) / "cifar-10-batches-py"
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    parts = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    for j, (fname, n) in enumerate(parts):
        labels = _balanced_labels(n, 10, seed + j)
        _dump_py2({"batch_label": f"{fname} of 1", "labels": labels.tolist(),
                   "data": _cifar_rows(labels, 10, seed + j),
                   "filenames": [f"img_{j}_{i}.png" for i in range(n)]}, folder / fname)
    _dump_py2({"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072}, folder / "batches.meta")
    return sorted(folder.iterdir())


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> list[Path]:
    folder = Path(root) / "cifar-100-python"
    for j, (fname, n) in enumerate([("train", n_train), ("test", n_test)]):
        fine = _balanced_labels(n, 100, seed + j)
        _dump_py2({"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{fname} batch 1 of 1",
                   "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                   "data": _cifar_rows(fine, 100, seed + j)}, folder / fname)
    _dump_py2({"fine_label_names": [f"fine_{i}" for i in range(100)],
               "coarse_label_names": [f"coarse_{i}" for i in range(20)]}, folder / "meta")
    return sorted(folder.iterdir())


def write_svhn(root: Path, n_train: int = 30, n_test: int = 30, seed: int = 0) -> list[Path]:
    from scipy.io import savemat

    paths = []
    for j, (split, n) in enumerate([("train", n_train), ("test", n_test)]):
        digit = _balanced_labels(n, 10, seed + j)
        images = class_images(digit, 10, seed=seed + j)  # (N, 32, 32, 3)
        path = Path(root) / f"{split}_32x32.mat"
        path.parent.mkdir(parents=True, exist_ok=True)
        y = np.where(digit == 0, 10, digit).astype(np.uint8)[:, None]  # (N, 1): SVHN's label 10 is digit 0
        savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": y})  # X: (32, 32, 3, N)
        paths.append(path)
    return paths


TINY_WNIDS = [f"n{10000000 + 7919 * i % 99991:08d}" for i in range(200)]  # 200 ids, not in sorted order


def write_tinyimagenet(root: Path, n: int = 12, per_class: int = 0, seed: int = 0) -> list[Path]:
    """n val JPEGs (every 5th greyscale, as some real ones are) and `per_class` train JPEGs for each of the 200
    classes (train/<wnid>/images/<wnid>_<i>.JPEG, plus train/<wnid>/<wnid>_boxes.txt as in the zip), wnids.txt in
    the zip's unsorted order; returns the val image paths in annotation order."""
    base = Path(root) / "tiny-imagenet-200"
    val = base / "val"
    (val / "images").mkdir(parents=True, exist_ok=True)
    labels = _balanced_labels(n, len(TINY_WNIDS), seed)
    images = class_images(labels, len(TINY_WNIDS), side=64, seed=seed)
    paths, lines = [], []
    for i, (img, lab) in enumerate(zip(images, labels)):
        path = val / "images" / f"val_{i}.JPEG"
        pil = Image.fromarray(img)
        (pil.convert("L") if i % 5 == 4 else pil).save(path, format="JPEG", quality=90)
        paths.append(path)
        lines.append(f"{path.name}\t{TINY_WNIDS[lab]}\t0\t0\t63\t63")
    (val / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    if per_class:
        train_labels = np.repeat(np.arange(len(TINY_WNIDS)), per_class)
        train_images = class_images(train_labels, len(TINY_WNIDS), side=64, seed=seed + 1)
        for j, (img, lab) in enumerate(zip(train_images, train_labels)):
            wnid = TINY_WNIDS[lab]
            folder = base / "train" / wnid / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{wnid}_{j % per_class}.JPEG", format="JPEG", quality=90)
            with open(folder.parent / f"{wnid}_boxes.txt", "a") as f:
                f.write(f"{wnid}_{j % per_class}.JPEG\t0\t0\t63\t63\n")
    return paths


GTSRB_CSV_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def write_gtsrb(root: Path, per_class: int = 2, n_test: int = 20, seed: int = 0) -> Path:
    """The official GTSRB zips, extracted as torchvision expects under <root>/gtsrb: GTSRB/Training/<class:05d>/
    <track:05d>_<i:05d>.ppm with GT-<class:05d>.csv (';'-separated) for all 43 classes, GTSRB/Final_Test/Images/
    <i:05d>.ppm with GT-final_test.test.csv (no labels), and GT-final_test.csv (with ClassId) beside GTSRB/.
    PPM images of varying sizes (the real ones range from 15x15 to 250x250). Returns the gtsrb folder."""
    base = Path(root) / "gtsrb"
    rng = np.random.default_rng(seed)
    train_labels = np.repeat(np.arange(43), per_class)
    test_labels = _balanced_labels(n_test, 43, seed + 1)

    def image(label: int, i: int, offset: int) -> tuple[Image.Image, int, int]:
        w, h = int(rng.integers(15, 60)), int(rng.integers(15, 60))
        pixels = class_images(np.array([label]), 43, side=max(w, h), seed=seed + offset + i)[0][:h, :w]
        return Image.fromarray(pixels), w, h

    for c in range(43):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = [GTSRB_CSV_HEADER]
        for i in range(per_class):
            img, w, h = image(c, i, 1000 * c)
            name = f"00000_{i:05d}.ppm"
            img.save(folder / name, format="PPM")
            rows.append(f"{name};{w};{h};1;1;{w - 2};{h - 2};{c}")
        (folder / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True, exist_ok=True)
    rows, unlabelled = [GTSRB_CSV_HEADER], [GTSRB_CSV_HEADER.rsplit(";", 1)[0]]
    for i, c in enumerate(test_labels):
        img, w, h = image(int(c), i, 99999)
        img.save(images / f"{i:05d}.ppm", format="PPM")
        rows.append(f"{i:05d}.ppm;{w};{h};1;1;{w - 2};{h - 2};{c}")
        unlabelled.append(f"{i:05d}.ppm;{w};{h};1;1;{w - 2};{h - 2}")
    (images / "GT-final_test.test.csv").write_text("\n".join(unlabelled) + "\n")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return base


def write_all(root: Path) -> Path:
    """Every downloadable set, small, under one data root."""
    write_cifar10(root)
    write_cifar100(root)
    write_svhn(root)
    write_tinyimagenet(root, per_class=2)
    write_gtsrb(root)
    return Path(root)


def accept_fake_checksums(monkeypatch, root: Path) -> None:
    """Make torchvision's md5 tables list the md5s of the fake files under `root` (for this test only)."""
    root = Path(root)

    def md5(path: Path) -> str:
        return calculate_md5(path) if path.is_file() else "missing"

    for cls in (datasets.CIFAR10, datasets.CIFAR100):
        folder = root / cls.base_folder
        for attr in ("train_list", "test_list"):
            monkeypatch.setattr(cls, attr, [[f, md5(folder / f)] for f, _ in getattr(cls, attr)])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
    monkeypatch.setattr(datasets.SVHN, "split_list", {
        split: [url, fname, md5(root / fname)] for split, (url, fname, _) in datasets.SVHN.split_list.items()})
