"""The dataset registry, the one "prepare" function, and the two entry points `load_id` / `load_ood`.

Every dataset (ID or OoD) is one loader function decorated with `register_dataset(info)` (docs/architecture.md#registries, after timm's
`register_model`). A loader returns images in pixel space (uint8 0..255 or float in [0, 1], its native size); this
module turns them into model input exactly one way, `to_model_input`: resize (antialiased bilinear) to the ID
set's H x W, match its channels, then normalize with the ID set's mean/std (docs/method.md#normalization: CIFAR-10
statistics, also for the OoD sets of a CIFAR-10 model). The REST server uses the same function on uploaded images.

The validation split is a fixed-seed stratified hold-out of the training set (docs/method.md#val-split: 10% of
CIFAR-10 train -> 45k train / 5k val). The whole set is moved to `device` once (docs/architecture.md#device-data, as airbench).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma weights, as PIL's convert("L") uses them.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_CHUNK = 4096  # images converted per step: bounds the float temporaries of a 10k x 3 x 64 x 64 set to ~200 MB


# torchvision is imported on first use, not with ncood.data: `import torchvision` loads all of it (models, ops and,
# through ops, torch._dynamo), about 2 s per process on 2 cores (measured), paid by every Ray trial worker and CLI
# call although digits, photos, letters and the generated sets never touch it.
def torchvision_datasets():
    """The module torchvision.datasets (imported now if it is not yet)."""
    from torchvision import datasets

    return datasets


def check_integrity(path: str | Path, md5: str | None = None) -> bool:
    """torchvision.datasets.utils.check_integrity: the file exists and, if md5 is given, has that md5."""
    from torchvision.datasets.utils import check_integrity as check

    return check(str(path), md5)


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """What the rest of ncood may know about a dataset without loading it."""

    name: str
    num_classes: int | None  # None exactly when the set cannot be ID (used as OoD only)
    can_be_id: bool
    image_shape: tuple[int, int, int] | None  # (C, H, W) as model input (loaders may return another size, which
    # to_model_input resizes: Tiny ImageNet 64 -> 32); None: made in the ID shape (noise...)
    description: str
    how_to_get: str  # shown in DatasetNotFoundError
    default_batch_size: int | None = None
    default_ood: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()  # normalization applied when this set is ID, one value per channel
    std: tuple[float, ...] = ()
    crop_pad: int = 0  # random-crop padding in pixels (training augmentation)
    flip: bool = False  # random horizontal flip (training augmentation)

    def __post_init__(self) -> None:
        if self.can_be_id != (self.num_classes is not None):
            raise ValueError(f"{self.name}: num_classes must be set exactly when can_be_id")
        if self.can_be_id:
            c = self.image_shape[0] if self.image_shape else 0
            if not (len(self.mean) == len(self.std) == c) or min(self.std) <= 0:
                raise ValueError(f"{self.name}: an ID set needs one mean and one positive std per channel")


@dataclass
class RawImages:
    """What a registered loader returns: pixel space, not yet normalized or resized."""

    x: torch.Tensor  # (N, C, H, W) uint8 in 0..255 or float in [0, 1]
    y: torch.Tensor | None = None  # (N,) int64 class index; None where the set has no labels we use
    class_names: list[str] | None = None


class Loader(Protocol):
    def __call__(self, root: Path, split: str, *, download: bool, like: IDData | None, seed: int) -> RawImages:
        """split is "train" or "test" (OoD use reads "test"); like is the ID data an OoD set is made for."""


FileCheck = Callable[[Path, bool], None]  # (data root, as_id) -> None, or DatasetNotFoundError: files are lacking


@dataclass(frozen=True)
class DatasetEntry:
    info: DatasetInfo
    load: Loader
    check: FileCheck | None = None  # None: the set ships with a package or is generated (nothing to find on disk)


DATASETS: dict[str, DatasetEntry] = {}  # the one dataset registry, filled by @register_dataset


Files = Callable[[Path, bool], list[tuple[Path, str | None]]]  # (data root, as_id) -> (path, md5 or None) to find


def register_dataset(info: DatasetInfo, *, files: Files | None = None,
                     check: FileCheck | None = None) -> Callable[[Loader], Loader]:
    """Decorator: file `fn` under `info.name`. A new dataset is one decorated function; a set read from files under
    the data root also names them, so that a job finds missing data before it starts any trial (check_available):
    `files(root, as_id)`, the list its loader checks too (require_files), or `check(root, as_id)` when finding
    them is more than a list (Fashion-MNIST: linkable from Debian's package)."""
    if files is not None:
        check = lambda root, as_id: require_files(info.name, root, files(root, as_id))  # noqa: E731

    def decorate(fn: Loader) -> Loader:
        if info.name in DATASETS:
            raise ValueError(f"dataset {info.name!r} is registered twice")
        DATASETS[info.name] = DatasetEntry(info, fn, check)
        return fn

    return decorate


def check_available(name: str, root: str | Path, *, as_id: bool) -> None:
    """DatasetNotFoundError (where it looked, how to get it) when `name`'s loader would not find its files under
    `root` for ID use (train and test parts) or OoD use (the test part) without downloading; reads only (no download,
    no link, nothing created)."""
    check = _entry(name).check
    if check is not None:
        check(Path(root).expanduser().absolute(), as_id)


def _present(path: Path, md5: str | None) -> bool:
    return check_integrity(path, md5) or (md5 is None and path.is_dir())  # a folder has no checksum


def require_files(name: str, root: Path, files: list[tuple[Path, str | None]]) -> None:
    """DatasetNotFoundError naming every file unless all (path, md5 or None) are there with their md5."""
    if not all(_present(path, md5) for path, md5 in files):
        raise DatasetNotFoundError.build(name, root, files)


def _entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        ood_only = sorted(set(list_datasets()) - set(list_datasets(id_only=True)))
        raise ValueError(f"unknown dataset {name!r}; ID (trainable) sets: {', '.join(list_datasets(id_only=True))}; "
                         f"OoD-only sets: {', '.join(ood_only)}")
    return DATASETS[name]


def get_info(name: str) -> DatasetInfo:
    return _entry(name).info


def list_datasets(id_only: bool = False) -> list[str]:
    return sorted(n for n, e in DATASETS.items() if e.info.can_be_id or not id_only)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or fail their checksum; the message says where we looked and how to get them."""

    @classmethod
    def build(cls, name: str, root: Path, files: list[tuple[Path, str | None]],
              detail: str = "") -> DatasetNotFoundError:
        """files: (path, md5 or None) looked at; each is reported as missing, checksum mismatch or ok."""
        lines = [f"dataset {name!r} not found or incomplete under data root {root}."]
        if detail:
            lines.append(detail)
        lines.append("Looked at:")
        for path, md5 in files:
            state = "ok" if _present(path, md5) else "missing" if not path.exists() else (
                "checksum mismatch (partial download, corrupt or a different version)"
            )
            lines.append(f"  {path}  [{state}]")
        lines.append(f"How to get it: {get_info(name).how_to_get}")
        lines.append(
            "Point ncood at the folder holding it with --data-root (root=...), or fetch it with download=True / "
            "--download on a machine with network access."
        )
        return cls("\n".join(lines))


def _check_images01(x: torch.Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float (N, C, H, W) batch in [0, 1], got {tuple(x.shape)} {x.dtype}")
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x)  # one reduction; a NaN anywhere makes both NaN, which fail the test below
    if not (float(lo) >= 0 and float(hi) <= 1):
        raise ValueError("image values must be finite and in [0, 1]")


def resize_images(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) float -> (N, C, H, W): bilinear with antialias (torch's PIL-like resampling); no-op if equal."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def to_model_input(images01: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """The one prepare function: (N, C, H, W) float in [0, 1], any size, 1 or 3 channels -> the ID format of `info`.

    RGB -> grey uses ITU-R 601-2 luma (PIL's "L"); grey -> RGB repeats the channel; then resize to info's H x W and
    normalize with info.mean/std. Runs on the input's device; returns float32 (N, *info.image_shape).
    """
    _check_images01(images01)
    c, h, w = info.image_shape
    x = images01.float()
    if x.shape[1] != c:
        if (x.shape[1], c) == (3, 1):
            luma = torch.tensor(LUMA_WEIGHTS, device=x.device)
            x = (x * luma[None, :, None, None]).sum(1, keepdim=True)  # (N, 1, h, w)
        elif (x.shape[1], c) == (1, 3):
            x = x.expand(-1, 3, -1, -1)  # (N, 3, h, w)
        else:
            raise ValueError(f"cannot convert {x.shape[1]} channels to {c} (only 1 <-> 3)")
    x = resize_images(x, (h, w))
    mean = torch.tensor(info.mean, device=x.device)[None, :, None, None]
    std = torch.tensor(info.std, device=x.device)[None, :, None, None]
    return ((x - mean) / std).contiguous()


def _prepare(x: torch.Tensor, info: DatasetInfo, device: torch.device | str) -> torch.Tensor:
    """Pixel-space images (uint8 or float01, any device) -> normalized float32 on `device`, in chunks."""
    out = torch.empty((len(x), *info.image_shape), dtype=torch.float32, device=device)
    for i in range(0, len(x), _CHUNK):
        xb = x[i:i + _CHUNK].to(device)  # move uint8 before widening: 4x less traffic
        xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
        out[i:i + _CHUNK] = to_model_input(xb, info)
    return out


def stratified_holdout(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of labels y (N,) into (keep, held), both sorted; len(held) = round(fraction * N).

    Each class gives floor(fraction * n_c) samples, the remainder goes to the classes with the largest fractional
    quota (ties: lower class index), so every class keeps its share. Which samples: a per-class torch.randperm drawn
    from a CPU generator seeded with `seed` (the same split on every machine).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"hold-out fraction must be in [0, 1), got {fraction}")
    y = y.cpu()
    classes, counts = torch.unique(y, return_counts=True)
    quota = fraction * counts.double()  # (K,)
    take = quota.floor().long()
    extra = round(fraction * len(y)) - int(take.sum())
    order = torch.sort(quota - take, descending=True, stable=True).indices
    take[order[:extra]] += 1
    g = torch.Generator().manual_seed(seed)
    held = [torch.nonzero(y == c).flatten()[torch.randperm(int(n), generator=g)[:k]]
            for c, n, k in zip(classes.tolist(), counts.tolist(), take.tolist())]
    held = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32, normalized with the ID set's mean/std
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class IDData:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a stratified random subset of exactly n of the labels y (N,) (stratified_holdout's quota
    and draw); all of them when n == N. A subset smaller than the class count or larger than N is refused."""
    classes = len(torch.unique(y))
    if not classes <= n <= len(y):
        raise ValueError(f"train_subset={n}: must be between the number of classes ({classes}) and the "
                         f"{len(y)} training images left after the validation hold-out")
    return torch.arange(len(y)) if n == len(y) else stratified_holdout(y, n / len(y), seed)[1]


def load_id(name: str, root: str | Path, *, device: torch.device | str = "cpu", download: bool = False,
            val_fraction: float = 0.1, split_seed: int = 0, train_subset: int | None = None) -> IDData:
    """Load an ID set: its train part minus a stratified `val_fraction` hold-out (seeded), val, and its test part.

    train_subset: keep only a stratified random `train_subset` images of the train part (seeded by split_seed,
    drawn after the hold-out, so val and test are those of the full set); None keeps all.
    """
    entry = _entry(name)
    info = entry.info
    if not info.can_be_id:
        raise ValueError(f"{name!r} is OoD-only; ID sets: {', '.join(list_datasets(id_only=True))}")
    root = Path(root).expanduser().absolute()  # trial working dirs are temporary: say the absolute path in errors
    train, test = (entry.load(root, s, download=download, like=None, seed=split_seed) for s in ("train", "test"))
    keep, held = stratified_holdout(train.y, val_fraction, split_seed)
    if train_subset is not None:
        keep = keep[stratified_subset(train.y[keep], train_subset, split_seed)]

    def split(raw: RawImages, idx: torch.Tensor | None = None) -> Split:
        x, y = (raw.x, raw.y) if idx is None else (raw.x[idx], raw.y[idx])
        return Split(_prepare(x, info, device), y.long().to(device))

    names = train.class_names or [str(i) for i in range(info.num_classes)]
    return IDData(info, split(train, keep), split(train, held), split(test), list(names))


def load_ood(name: str, root: str | Path, *, like: IDData, device: torch.device | str = "cpu",
             download: bool = False, seed: int = 0, max_images: int | None = None) -> torch.Tensor:
    """The "test" part of `name` in `like`'s format: (N, *like.image_shape) float32 on `device`, normalized.

    max_images keeps a seeded random subset (order preserved); generated sets (photos, noise, scrambled) use `seed`.
    """
    root = Path(root).expanduser().absolute()
    x = _entry(name).load(root, "test", download=download, like=like, seed=seed).x
    if max_images is not None and max_images < len(x):
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(len(x), generator=g)[:max_images].sort().values.to(x.device)]
    return _prepare(x, like.info, device)
