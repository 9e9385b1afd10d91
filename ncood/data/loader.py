"""Device-resident batches and batched crop/flip augmentation, after airbench's `CifarLoader` (Keller Jordan).

The whole split already lives on the training device (docs/architecture.md#device-data): an epoch is one permutation, and each batch is
gathered and augmented there with a few vectorized tensor ops (no torch DataLoader, no loop over images).
The augmentation (DDU's CIFAR transform; the papers state none: docs/method.md#augmentation) is a random 32x32 crop
of the image zero-padded by 4 pixels plus a random horizontal flip; the images here are already normalized, so
"zero" padding is the normalized zero (0 - mean) / std.

Reproducibility: every random draw (epoch permutation, crop offsets, flips) comes from the `torch.Generator` passed
in, in a fixed order, so a trainer that saves `generator.get_state()` between epochs and restores it on resume
gets bit-identical batches. The generator may live on the CPU (works for any data device; only the small index
tensors cross over) or on the data's CUDA device; draws are made on `generator.device`.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from ncood.data.registry import DatasetInfo, Split


def normalized_zero(info: DatasetInfo) -> torch.Tensor:
    """(C,) float32: the value a black pixel has after normalization, (0 - mean) / std, per channel."""
    return -torch.tensor(info.mean) / torch.tensor(info.std)


def random_crop_flip(x: torch.Tensor, *, pad: int, flip: bool, fill: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """Batched augmentation on x's device: (B, C, H, W) -> (B, C, H, W).

    Each image is padded by `pad` pixels of `fill` ((C,), per channel), cropped back to H x W at its own random
    offset (uniform in 0..2*pad per axis) and mirrored left-right with probability 1/2. Vectorized over the batch:
    the padded image is never built; a row gather and a column gather (which also flips) read the source pixel,
    positions that fall in the padding get `fill`. Draws from `generator`, in this order: row offsets (B,),
    column offsets (B,), flips (B,).
    """
    b, c, h, w = x.shape
    if pad == 0 and not flip:
        return x
    gdev = generator.device
    dy = torch.randint(-pad, pad + 1, (b,), generator=generator, device=gdev).to(x.device)  # (B,) row shift
    dx = torch.randint(-pad, pad + 1, (b,), generator=generator, device=gdev).to(x.device)  # (B,) column shift
    mirror = torch.zeros(b, dtype=torch.bool, device=x.device)
    if flip:
        mirror = (torch.rand(b, generator=generator, device=gdev) < 0.5).to(x.device)  # (B,)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (B, H) source row of each output row; outside 0..H-1 = padding
    cols = dx[:, None] + torch.where(mirror[:, None], w - 1 - ar_w, ar_w)  # (B, W) source column, reversed if flipped
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
    if pad == 0:
        return out
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    return torch.where(inside, out, fill.to(x.device, x.dtype)[None, :, None, None])  # (B, C, H, W)


class DeviceLoader:
    """Iterate (images, labels) batches of a device-resident Split; optional shuffling and crop/flip.

    `generator` is required when shuffle or augment is on (no hidden global RNG). State advances by one
    permutation per epoch (if shuffle) and one augmentation draw per batch (if augment).
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool, augment: bool, crop_pad: int = 0,
                 flip: bool = False, fill: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if (shuffle or augment) and generator is None:
            raise ValueError("shuffle/augment need a torch.Generator (its state is what a resume restores)")
        if augment and crop_pad > 0 and fill is None:
            raise ValueError("crop padding needs fill=normalized_zero(info): the padded value in normalized units")
        self.split, self.batch_size = split, batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.crop_pad, self.flip, self.generator = crop_pad, flip, generator
        channels = split.x.shape[1]
        self.fill = (torch.zeros(channels) if fill is None else fill).to(split.x.device, split.x.dtype)  # (C,)

    def __len__(self) -> int:
        n = len(self.split.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.split.x, self.split.y
        n = len(y)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.generator.device).to(x.device)
        else:
            order = torch.arange(n, device=x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]  # (B,)
            xb = x[idx]  # (B, C, H, W) gathered copy on x's device
            if self.augment:
                xb = random_crop_flip(xb, pad=self.crop_pad, flip=self.flip, fill=self.fill,
                                      generator=self.generator)
            yield xb, y[idx]
