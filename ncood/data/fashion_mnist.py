"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), an offline real-image ID set: Debian's `dataset-fashion-mnist`.

Loading is torchvision's: `torchvision.datasets.FashionMNIST(root)` reads the unpacked IDX files
`<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte` (it checks only that they exist; its md5
table is for the .gz downloads). 60,000 train (54,000 / 6,000 train / val after the seeded stratified 10% hold-out)
and 10,000 test images, 28x28 grey uint8, 10 classes.

Getting the files there is the hand-written part (`link`), because no library does it: Debian's package installs
the four *.gz files in /usr/share/datasets/fashion-mnist/, recompressed (their .gz md5s differ from torchvision's
table, so `download=True` would not accept them and would fetch the originals over the network instead). `link`
unpacks them into the data root with torchvision's `extract_archive` (a folder of unpacked files is symlinked,
or copied where symlinks fail), each file atomically (temp name + rename: concurrent Ray trials may link the same
root at once), and checks each unpacked file against `RAW_MD5`. The loader links by itself when the package is
installed and the root lacks the files; `ncood data link fashion-mnist` does it explicitly (and `--install` runs
apt-get). No .gz is linked into raw/: torchvision's download would overwrite a link's target with its own file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ncood.data.registry import (
    DatasetInfo, DatasetNotFoundError, IDData, RawImages, check_integrity, register_dataset, torchvision_datasets,
)
from ncood.data.torchvision_sets import _construct

DEBIAN_PACKAGE = "dataset-fashion-mnist"  # Debian/Ubuntu "science" section, 30 MB installed
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the package puts the four .gz files
INSTALL_COMMAND = f"sudo apt-get install -y {DEBIAN_PACKAGE}"
# md5 of each *unpacked* IDX file (what torchvision reads). Measured on Debian's 0.0~git20200523.55506a9-1 files
# after gunzip; the same four values are published for the unpacked official release (the .gz files of
# http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ whose md5s torchvision's FashionMNIST.resources lists).
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
# Pixel statistics of the 60,000 training images (all of them, values / 255), computed with float64 sums over the
# unpacked train-images-idx3-ubyte; tests/test_fashion_mnist.py recomputes them. They are the values commonly
# quoted for Fashion-MNIST (0.2860 / 0.3530).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
FASHION_MNIST_CLASS = "FashionMNIST"  # torchvision's class name, the folder it reads (tests pin it to torchvision's)


def raw_folder(root: str | Path) -> Path:
    """<root>/FashionMNIST/raw: where torchvision's FashionMNIST looks (its `raw_folder` property)."""
    return Path(root) / FASHION_MNIST_CLASS / "raw"


def expected_files(root: str | Path) -> list[tuple[Path, str]]:
    """(path, md5) of the four unpacked files under `root`."""
    return [(raw_folder(root) / name, md5) for name, md5 in RAW_MD5.items()]


def is_linked(root: str | Path) -> bool:
    return all(check_integrity(path, md5) for path, md5 in expected_files(root))


def _source_file(source: Path, name: str) -> Path | None:
    """`name` or `name`.gz in `source`, whichever exists (unpacked first)."""
    for path in (source / name, source / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def source_complete(source: Path = DEBIAN_DIR) -> bool:
    return all(_source_file(Path(source), name) is not None for name in RAW_MD5)


def _place(src: Path, dest: Path) -> str:
    """Put `src` at `dest` atomically: .gz -> unpacked (torchvision's extract_archive), else symlink or copy."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".ncood-link-") as tmp:
        if src.suffix == ".gz":
            from torchvision.datasets.utils import extract_archive  # lazily: see registry.torchvision_datasets

            staged, how = Path(extract_archive(str(src), tmp)), "unpacked"  # tmp/<name without .gz>
        else:
            staged = Path(tmp) / dest.name
            try:
                staged.symlink_to(src.resolve())
                how = "symlinked"
            except OSError:  # a file system without symlinks
                shutil.copyfile(src, staged)
                how = "copied"
        os.replace(staged, dest)  # atomic: a concurrent reader sees the old file or the whole new one
    return how


@dataclass(frozen=True)
class LinkResult:
    root: Path
    source: Path
    placed: dict[str, str]  # file name -> "unpacked" / "symlinked" / "copied" / "present" (already verified)

    def describe(self) -> str:
        done = ", ".join(f"{name} ({how})" for name, how in self.placed.items())
        return f"Fashion-MNIST in {raw_folder(self.root)} from {self.source}: {done}"


def link(root: str | Path, source: str | Path = DEBIAN_DIR) -> LinkResult:
    """Make `<root>/FashionMNIST/raw` hold the four verified unpacked IDX files, taken from `source` (Debian's
    folder by default; any folder holding the official files, gzipped or not). Files already there and verified
    are kept. Raises DatasetNotFoundError (with the install command) when `source` lacks a file, and when an
    unpacked file fails its md5 (the bad file is removed)."""
    root, source = Path(root).expanduser().absolute(), Path(source).expanduser().absolute()
    files = expected_files(root)
    missing = [name for name in RAW_MD5 if _source_file(source, name) is None]
    if missing and not is_linked(root):
        raise DatasetNotFoundError.build("fashion_mnist", root, files, detail=_missing_detail(root, source))
    raw_folder(root).mkdir(parents=True, exist_ok=True)
    placed = {}
    for path, md5 in files:
        if check_integrity(path, md5):
            placed[path.name] = "present"
            continue
        src = _source_file(source, path.name)
        placed[path.name] = _place(src, path)
        if not check_integrity(path, md5):
            path.unlink()
            raise DatasetNotFoundError.build(
                "fashion_mnist", root, files + [(src, None)],
                detail=f"{src} does not unpack to the official {path.name} (md5 {md5}): a different version or a "
                       f"damaged copy. Reinstall it: sudo apt-get install --reinstall -y {DEBIAN_PACKAGE}.")
    return LinkResult(root, source, placed)


def _missing_detail(root: Path, source: Path) -> str:
    lacking = ", ".join(name for name in RAW_MD5 if _source_file(source, name) is None)
    if source != DEBIAN_DIR:
        return (f"The Fashion-MNIST files are not under the data root, and {source} lacks {lacking} (gzipped or "
                f"not). Point --source at the folder holding all four, or install Debian's package and link it:\n"
                f"  {INSTALL_COMMAND}\n  ncood data link fashion-mnist --data-root {root}")
    return (f"The Fashion-MNIST files are not under the data root, and {source} lacks {lacking}: Debian's package "
            f"{DEBIAN_PACKAGE} is not installed. Install it, then link it into the data root:\n"
            f"  {INSTALL_COMMAND}\n  ncood data link fashion-mnist --data-root {root}\n"
            f"(ncood also links it by itself on first use once the package is installed.)")


def install_debian_package() -> None:
    """apt-get install the package (root and apt-get needed; `apt-get update` first when the package is unknown).
    Raises RuntimeError with the command to run when this process cannot install."""
    if source_complete(DEBIAN_DIR):
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"no apt-get on this machine: get the four Fashion-MNIST IDX files "
                           f"(https://github.com/zalandoresearch/fashion-mnist) and run "
                           f"`ncood data link fashion-mnist --source DIR`, or train with --download")
    if os.geteuid() != 0:
        raise RuntimeError(f"installing {DEBIAN_PACKAGE} needs root: run `{INSTALL_COMMAND}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", DEBIAN_PACKAGE]
    run = dict(env=env, capture_output=True, text=True, timeout=900)  # s: a slow mirror, never forever
    done = subprocess.run(install, **run)
    if done.returncode != 0:  # a fresh container has no package lists yet
        subprocess.run(["apt-get", "update", "-q"], **run)
        done = subprocess.run(install, **run)
    if done.returncode != 0 or not source_complete(DEBIAN_DIR):
        raise RuntimeError(f"`{' '.join(install)}` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")


def check_files(root: Path, as_id: bool = True) -> None:
    """What ensure_files finds without downloading, read only (check_available): the files under `root`, or Debian's
    package to link them from; else DatasetNotFoundError naming the install and link commands. ID and OoD use
    (as_id) read the same four files."""
    if not (is_linked(root) or source_complete(DEBIAN_DIR)):
        raise _not_found(root)


def _not_found(root: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError.build("fashion_mnist", root, expected_files(root),
                                      detail=_missing_detail(root, DEBIAN_DIR))


def ensure_files(root: Path, download: bool) -> None:
    """The verified unpacked files under `root`: present, else linked from Debian's package, else downloaded by
    torchvision (download=True), else DatasetNotFoundError naming the install and link commands."""
    if is_linked(root):
        return
    files = expected_files(root)
    if source_complete(DEBIAN_DIR):
        result = link(root, DEBIAN_DIR)
        print(f"ncood: linked {result.describe()}", file=sys.stderr)
        return
    if not download:
        raise _not_found(root)
    for path, md5 in files:  # torchvision only checks that the files exist: clear damaged ones so it fetches anew
        if path.exists() and not check_integrity(path, md5):
            path.unlink()
    _construct("fashion_mnist", root, files, lambda: torchvision_datasets().FashionMNIST(str(root), download=True))
    if not is_linked(root):
        raise DatasetNotFoundError.build("fashion_mnist", root, files, detail="The downloaded files fail their md5.")


@register_dataset(DatasetInfo(
    name="fashion_mnist", num_classes=10, can_be_id=True, image_shape=(1, 28, 28),
    description="Fashion-MNIST (Zalando): 60k train (54k/6k train/val, seeded stratified) + 10k test, 28x28 grey, "
                "10 clothing classes; Debian package dataset-fashion-mnist",
    how_to_get=f"`{INSTALL_COMMAND}` (Debian/Ubuntu, 30 MB), then `ncood data link fashion-mnist --data-root "
               f"<data-root>` (done automatically on first use); elsewhere `ncood data link fashion-mnist --source "
               f"DIR` with the four official IDX files, or download=True / --download (torchvision's mirror).",
    default_batch_size=1024,  # the papers' batch (seed paper Sec. 3.1; DDU)
    default_ood=("digits", "letters", "photos", "scrambled", "noise"),
    mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
    # DDU's CIFAR recipe shape (random crop with zero padding + horizontal flip), scaled to 28 px: 3 px is the same
    # 1/8 of the side as DDU's 4 px of 32 (rounded down: every Fashion-MNIST product is scaled so that its long
    # side spans the whole 28 px frame, and a larger shift cuts off more of it).
    crop_pad=3,
    # Every class is mirror-invariant (a mirrored shirt, bag or boot is still one), unlike digits or house numbers.
    flip=True,
), check=check_files)
def load_fashion_mnist(root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
    ensure_files(root, download)
    ds = torchvision_datasets().FashionMNIST(str(root), train=split == "train", download=False)
    x = ds.data[:, None].contiguous()  # (N, 28, 28) -> (N, 1, 28, 28) uint8
    return RawImages(x, ds.targets.to(torch.int64), list(ds.classes))
