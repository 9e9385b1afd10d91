"""ncood.data.DeviceLoader, the training batches on the device: each sample once per epoch, the DDU crop-and-flip
augmentation (a padded, shifted, mirrored copy), replayable from the generator's state, on CUDA too."""
from __future__ import annotations

import pytest
import torch

from ncood.data import DeviceLoader, Split, get_info, normalized_zero, random_crop_flip


def _coded_split(n=50, c=3, h=4, w=4) -> Split:
    """Images whose pixel values are all distinct and positive: x[i, ch, r, col] encodes its position."""
    return Split(torch.arange(1, n * c * h * w + 1, dtype=torch.float32).view(n, c, h, w), torch.arange(n))


def test_each_sample_once_per_epoch():
    split = _coded_split()
    g = torch.Generator().manual_seed(0)
    loader = DeviceLoader(split, 7, shuffle=True, augment=False, generator=g)
    assert len(loader) == 8
    for _ in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [7] * 7 + [1]
        ys = torch.cat([y for _, y in batches])
        assert torch.equal(ys.sort().values, torch.arange(50)) and not torch.equal(ys, torch.arange(50))
        assert all(torch.equal(xb, split.x[yb]) for xb, yb in batches)
    dropped = DeviceLoader(split, 7, shuffle=False, augment=False, drop_last=True)
    assert len(dropped) == 7 and [len(y) for _, y in dropped] == [7] * 7
    with pytest.raises(ValueError, match="Generator"):
        DeviceLoader(split, 7, shuffle=True, augment=False)


def test_crop_flip_is_a_padded_shifted_mirrored_copy():
    """Every output equals some (row shift, column shift, flip) of its padded input; all variants occur."""
    split = _coded_split(n=400)
    fill = normalized_zero(get_info("cifar10"))
    pad = 3  # large relative to the 4x4 image: most crops include padding
    out = random_crop_flip(split.x, pad=pad, flip=True, fill=fill, generator=torch.Generator().manual_seed(0))
    padded = torch.cat([torch.nn.functional.pad(split.x[:, ch:ch + 1], [pad] * 4, value=float(fill[ch]))
                        for ch in range(3)], 1)  # (N, 3, 10, 10) reference padding
    seen = set()
    for i in range(len(out)):  # reference check may loop; the implementation does not
        matches = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy:dy + 4, dx:dx + 4]))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 80  # of 7 * 7 * 2 = 98 possible
    border = out[(out < 0).flatten(1).any(1)]  # crops that include padding
    for ch in range(3):
        assert set(border[:, ch][border[:, ch] < 0].unique().tolist()) == {float(fill[ch])}


def test_flip_mirrors():
    x = torch.randn(64, 3, 5, 5)
    out = random_crop_flip(x, pad=0, flip=True, fill=torch.zeros(3), generator=torch.Generator().manual_seed(1))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all() and 10 < int(mirrored.sum()) < 54


def test_generator_state_replays_identical_batches():
    split = _coded_split(n=30, h=6, w=6)
    g = torch.Generator().manual_seed(0)
    loader = DeviceLoader(split, 8, shuffle=True, augment=True, crop_pad=2, flip=True, fill=torch.zeros(3),
                          generator=g)
    list(loader)  # one epoch in: the state a trainer would checkpoint
    state = g.get_state()
    first = list(loader)
    g.set_state(state)
    again = list(loader)
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(first, again))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(first, list(loader)))


def test_augmentation_covers_every_image_in_full_batches():
    """10k CIFAR-sized images through the augmenting loader: every image once, batches of 1024 (the last one
    smaller), and augmented (crops and flips change pixels; the loader's speed is measured in bench/, not here)."""
    split = Split(torch.randn(10_000, 3, 32, 32), torch.arange(10_000))
    loader = DeviceLoader(split, 1024, shuffle=True, augment=True, crop_pad=4, flip=True,
                          fill=normalized_zero(get_info("cifar10")), generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert [len(y) for _, y in batches] == [1024] * 9 + [10_000 - 9 * 1024]
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels.sort().values, torch.arange(10_000))  # every image once
    x = torch.cat([b for b, _ in batches])
    assert x.shape == (10_000, 3, 32, 32) and not torch.equal(x, split.x[labels])  # augmented, not copied


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
def test_loader_on_cuda(gen_device):
    split = Split(torch.randn(100, 3, 8, 8, device="cuda"), torch.arange(100, device="cuda"))
    g = torch.Generator(device=gen_device).manual_seed(0)
    loader = DeviceLoader(split, 32, shuffle=True, augment=True, crop_pad=2, flip=True, fill=torch.zeros(3),
                          generator=g)
    state = g.get_state()
    first = list(loader)
    g.set_state(state)
    assert all(xb.is_cuda and torch.equal(xb, xa) for (xb, _), (xa, _) in zip(list(loader), first))
    assert torch.equal(torch.cat([y for _, y in first]).sort().values.cpu(), torch.arange(100))
