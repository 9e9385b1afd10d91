"""ncood.data: the registry sweep, each dataset's on-disk format and the prepare function (the device loader:
tests/test_loader.py).

The downloadable sets are written small and in their real formats by tests/fake_datasets.py; torchvision's own
classes read them, with its md5 table pointed at the fake files (see accept_fake_checksums).
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import loadmat

from fake_datasets import TINY_WNIDS, accept_fake_checksums, write_all, write_gtsrb, write_tinyimagenet
from ncood.data import (
    DATASETS, DatasetNotFoundError, get_info, list_datasets, load_id, load_ood, stratified_holdout, to_model_input,
)
from ncood.data import tiny_imagenet
from ncood.data.builtin import DIGITS_TEST_FRACTION, _digits


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


@pytest.fixture
def root(fake_root, monkeypatch):
    accept_fake_checksums(monkeypatch, fake_root)
    return fake_root


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_id("digits", tmp_path_factory.mktemp("unused"))


def _pixels(x: torch.Tensor, name: str) -> torch.Tensor:
    """Undo the normalization of ID set `name`: back to [0, 1]."""
    info = get_info(name)
    return x * torch.tensor(info.std)[None, :, None, None] + torch.tensor(info.mean)[None, :, None, None]


# ---------------------------------------------------------------- registry sweep

def test_registry_lookup():
    assert set(list_datasets(id_only=True)) <= set(list_datasets()) == set(DATASETS)
    with pytest.raises(ValueError, match="cifar10.*digits"):
        get_info("cifar11")
    for name in list_datasets():
        info = get_info(name)
        assert info.name == name and info.description and info.how_to_get
        assert set(info.default_ood) <= set(DATASETS), f"{name}: unknown default OoD set"
        assert info.image_shape is None or len(info.image_shape) == 3


@pytest.mark.parametrize("name", list_datasets(id_only=True))
def test_every_id_set_loads(name, root):
    data = load_id(name, root)
    info = data.info
    assert data.num_classes == info.num_classes == len(data.class_names)
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape == (len(split.y), *info.image_shape)
        assert torch.isfinite(split.x).all()
        assert 0 <= int(split.y.min()) and int(split.y.max()) < info.num_classes
    assert len(data.train) > 0 and len(data.test) > 0
    for ood in info.default_ood:
        x = load_ood(ood, root, like=data)
        assert x.dtype == torch.float32 and x.shape[1:] == info.image_shape and len(x) > 0
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", list_datasets())
def test_every_set_loads_as_ood_for_digits(name, root, digits):
    x = load_ood(name, root, like=digits)
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8) and len(x) > 0
    assert torch.isfinite(x).all()
    pixels = _pixels(x, "digits")
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


@pytest.mark.parametrize("name", list_datasets())
def test_missing_files_raise_dataset_not_found(name, tmp_path, digits):
    """On an empty data root: a set needing files says where it looked and how to get it; the rest load."""
    try:
        load_ood(name, tmp_path, like=digits)
    except DatasetNotFoundError as err:
        assert str(tmp_path) in str(err) and "download" in str(err) and "missing" in str(err)
    else:
        assert name not in ("cifar10", "cifar100", "svhn", "tinyimagenet", "gtsrb")


# ---------------------------------------------------------------- digits

def test_builtin_files_read_as_scikit_learns_loaders_read_them():
    """digits and photos read scikit-learn's package files without importing it: the arrays equal its loaders'."""
    from sklearn.datasets import load_digits, load_sample_images

    from ncood.data.builtin import digits_arrays, sample_photo_arrays

    images, labels = digits_arrays()
    ref = load_digits()
    assert images.dtype == ref.images.dtype and np.array_equal(images, ref.images)
    assert np.array_equal(labels, ref.target) and labels.shape == (1797,) and labels.dtype == np.int64
    photos, ref_photos = sample_photo_arrays(), load_sample_images().images
    assert len(photos) == len(ref_photos) == 2
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(photos, ref_photos))


def test_builtin_files_missing_name_the_fix(monkeypatch, tmp_path):
    """No scikit-learn: a FileNotFoundError (the CLI prints it, exit 2) naming pip. A scikit-learn whose data files
    are elsewhere: a warning naming it, and scikit-learn's own loaders give the same data."""
    import importlib.machinery
    import importlib.util

    from ncood.data import builtin

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="not installed: pip install scikit-learn"):
        builtin.digits_arrays()
    fake = importlib.machinery.ModuleSpec("sklearn", None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake if name == "sklearn" else real(name, *a))
    from sklearn.datasets import load_digits, load_sample_images

    layout = r"scikit-learn \S+ at .* has no datasets/{}.*scikit-learn's loader.*pip install --force-reinstall"
    with pytest.warns(builtin.SklearnLayoutWarning, match=layout.format("images/china.jpg")):
        photos = builtin.sample_photo_arrays()
    assert all(np.array_equal(a, b) for a, b in zip(photos, load_sample_images().images)) and len(photos) == 2
    with pytest.warns(builtin.SklearnLayoutWarning, match=layout.format("data/digits.csv.gz")):
        images, labels = builtin.digits_arrays()
    assert np.array_equal(images, load_digits().images) and labels.dtype == np.int64
    assert np.array_equal(labels, load_digits().target)


def test_digits_splits_partition_deterministically():
    _, y = _digits()
    y = torch.from_numpy(y)
    for seed in (0, 1):
        train_all, test = stratified_holdout(y, DIGITS_TEST_FRACTION, seed)
        keep, val = stratified_holdout(y[train_all], 0.1, seed)
        train, val = train_all[keep], train_all[val]
        parts = torch.cat([train, val, test])
        assert len(parts) == 1797 and len(parts.unique()) == 1797  # disjoint and covering
        for part in (train, val, test):
            assert len(y[part].unique()) == 10  # stratified: every class in every split
    data0, again, data1 = (load_id("digits", "unused", split_seed=s) for s in (0, 0, 1))
    assert (len(data0.train), len(data0.val), len(data0.test)) == (1294, 144, 359)
    assert torch.equal(data0.test.x, again.test.x) and torch.equal(data0.train.y, again.train.y)
    assert not torch.equal(data0.test.x, data1.test.x)
    _, test0 = stratified_holdout(y, DIGITS_TEST_FRACTION, 0)
    expected = to_model_input(torch.from_numpy(_digits()[0])[test0][:, None], data0.info)  # (359, 1, 8, 8)
    assert torch.equal(data0.test.x, expected)


def test_digits_normalization_constants_match_train_statistics():
    data = load_id("digits", "unused", split_seed=0)
    pixels = _pixels(data.train.x, "digits")
    assert abs(pixels.mean().item() - data.info.mean[0]) < 1e-3
    assert abs(pixels.std().item() - data.info.std[0]) < 1e-3


def test_stratified_holdout_exact_total():
    y = torch.arange(200) % 100  # 2 per class: per-class quotas of 0.2 round down, the remainder is distributed
    keep, held = stratified_holdout(y, 0.1, 0)
    assert len(held) == 20 and len(keep) == 180 and len(torch.cat([keep, held]).unique()) == 200


def test_generated_sets_are_seeded(digits):
    for name in ("photos", "noise", "scrambled"):
        a, b, c = (load_ood(name, "unused", like=digits, seed=s) for s in (0, 0, 1))
        assert len(a) == len(digits.test) and torch.equal(a, b) and not torch.equal(a, c)
    sub = load_ood("noise", "unused", like=digits, max_images=50)
    assert sub.shape == (50, 1, 8, 8)


def test_scrambled_permutes_pixels_within_each_image(digits):
    x = load_ood("scrambled", "unused", like=digits)
    assert torch.allclose(x.flatten(1).sort(1).values, digits.test.x.flatten(1).sort(1).values, atol=1e-5)
    assert not torch.allclose(x, digits.test.x)


# ---------------------------------------------------------------- torchvision sets (fake files, real formats)

def test_cifar10_reads_the_pickle_batches(root):
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # the CIFAR page's reader sees bytes keys, as in the real files
    data = load_id("cifar10", root)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)
    assert data.class_names[:2] == ["airplane", "automobile"]
    assert torch.equal(data.test.y, torch.tensor(batch[b"labels"]))
    expected = torch.from_numpy(batch[b"data"]).view(-1, 3, 32, 32).float() / 255
    assert torch.allclose(_pixels(data.test.x, "cifar10"), expected, atol=1e-5)
    assert torch.equal(data.val.y.sort().values, torch.arange(10))  # 10% hold-out, one per class
    for _ in range(2):  # download=True with verified files present needs no network
        assert len(load_ood("cifar100", root, like=data, download=True)) == 100


def test_fake_files_fail_torchvisions_checksum_without_the_patch(fake_root):
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch") as err:
        load_id("cifar10", fake_root)
    assert str(fake_root / "cifar-10-batches-py" / "data_batch_1") in str(err.value)


def test_failed_download_becomes_dataset_not_found(tmp_path, monkeypatch, digits):
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match="Download failed"):
        load_ood("cifar100", tmp_path, like=digits, download=True)


def test_svhn_reads_the_mat_file(root):
    mat = loadmat(root / "test_32x32.mat")
    data = load_id("svhn", root)
    assert torch.equal(data.test.y, torch.from_numpy(mat["y"][:, 0].astype(np.int64) % 10))  # label 10 -> 0
    expected = torch.from_numpy(mat["X"]).permute(3, 2, 0, 1).float() / 255  # (32, 32, 3, N) -> (N, 3, 32, 32)
    assert torch.allclose(_pixels(data.test.x, "svhn"), expected, atol=1e-5)


def test_tinyimagenet_val_images_resized_to_32(root):
    cifar = load_id("cifar10", root)
    x = load_ood("tinyimagenet", root, like=cifar)
    assert x.shape == (12, 3, 32, 32)
    path = root / "tiny-imagenet-200" / "val" / "images" / "val_4.JPEG"  # a greyscale one
    with Image.open(path) as img:
        reference = np.asarray(img.convert("RGB").resize((32, 32), Image.BILINEAR)) / 255.0
    got = _pixels(x[4:5], "cifar10")[0].permute(1, 2, 0).numpy()
    assert np.abs(got - reference).max() < 2.5 / 255


def test_tinyimagenet_corrupt_or_missing_image_is_named(tmp_path, digits):
    paths = write_tinyimagenet(tmp_path, n=6)
    paths[3].write_bytes(paths[3].read_bytes()[:300])  # truncated JPEG
    with pytest.raises(OSError, match="val_3.JPEG"):
        load_ood("tinyimagenet", tmp_path, like=digits)
    paths[3].write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="val_3.JPEG"):
        load_ood("tinyimagenet", tmp_path, like=digits)
    paths[3].unlink()
    with pytest.raises(DatasetNotFoundError, match="val_3.JPEG"):
        load_ood("tinyimagenet", tmp_path, like=digits)


def test_tinyimagenet_download_uses_the_standard_archive(tmp_path, monkeypatch, digits):
    calls = []

    def fake_download(url, download_root, md5=None, **kwargs):
        calls.append((url, download_root, md5))
        write_tinyimagenet(download_root, n=5)

    import torchvision.datasets.utils

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)  # read at call time
    assert load_ood("tinyimagenet", tmp_path, like=digits, download=True).shape == (5, 1, 8, 8)
    assert calls == [(tiny_imagenet.TINY_URL, str(tmp_path), tiny_imagenet.TINY_MD5)]
    load_ood("tinyimagenet", tmp_path, like=digits, download=True)
    assert len(calls) == 1  # already there: no second download


def test_cifar100_as_id_set(root):
    """TMLR Table 7 trains on CIFAR-100: 100 fine classes, OoD SVHN, CIFAR-10 and Tiny ImageNet by default."""
    with open(root / "cifar-100-python" / "test", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = load_id("cifar100", root)
    assert data.num_classes == 100 and data.class_names[:2] == ["fine_0", "fine_1"]
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 100)
    assert torch.equal(data.test.y, torch.tensor(batch[b"fine_labels"]))
    expected = torch.from_numpy(batch[b"data"]).view(-1, 3, 32, 32).float() / 255
    assert torch.allclose(_pixels(data.test.x, "cifar100"), expected, atol=1e-5)
    assert set(data.info.default_ood) >= {"svhn", "cifar10", "tinyimagenet"}


def test_tinyimagenet_as_id_reads_the_train_folders(root):
    """TMLR Table 6: the 200-class train split (train/<wnid>/images) at 32x32, labelled val images as test set."""
    data = load_id("tinyimagenet", root)
    assert data.num_classes == 200 and data.class_names == sorted(TINY_WNIDS)  # labels in sorted-wnid order
    assert (len(data.train), len(data.val), len(data.test)) == (360, 40, 12)
    assert data.train.x.shape[1:] == (3, 32, 32) and set(data.info.default_ood) >= {"svhn", "cifar100"}
    rows = [line.split("\t") for line in (root / "tiny-imagenet-200" / "val" / "val_annotations.txt").read_text()
            .splitlines()]
    assert data.test.y.tolist() == [sorted(TINY_WNIDS).index(wnid) for _, wnid, *_ in rows]
    wnid = TINY_WNIDS[7]  # every train image of a class carries that class's label
    labels = torch.cat([data.train.y, data.val.y])
    assert int((labels == sorted(TINY_WNIDS).index(wnid)).sum()) == 2
    path = root / "tiny-imagenet-200" / "train" / wnid / "images" / f"{wnid}_0.JPEG"
    with Image.open(path) as img:  # the fake classes are colour + noise: the 32x32 mean colour survives resizing
        colour = np.asarray(img.convert("RGB")).reshape(-1, 3).mean(0) / 255
    x = torch.cat([data.train.x, data.val.x])[labels == sorted(TINY_WNIDS).index(wnid)]
    assert np.abs(_pixels(x, "tinyimagenet").mean((0, 2, 3)).numpy() - colour).max() < 0.05


def test_tinyimagenet_as_id_needs_all_classes(tmp_path):
    write_tinyimagenet(tmp_path, n=4, per_class=1)
    (tmp_path / "tiny-imagenet-200" / "wnids.txt").write_text("\n".join(TINY_WNIDS[:150]) + "\n")
    with pytest.raises(DatasetNotFoundError, match="lists 150 classes, expected 200"):
        load_id("tinyimagenet", tmp_path)
    write_tinyimagenet(tmp_path, n=4, per_class=0)  # wnids.txt back to 200, but no train folders
    for folder in (tmp_path / "tiny-imagenet-200" / "train").glob(f"{TINY_WNIDS[0]}/images"):
        for f in folder.iterdir():
            f.unlink()
    with pytest.raises(DatasetNotFoundError, match="No training images for class"):
        load_id("tinyimagenet", tmp_path)


def test_gtsrb_reads_the_official_layout_through_torchvision(root):
    """TMLR Table 5: torchvision's GTSRB reader, 43 classes, every image (15..60 px here) resized to 32x32."""
    data = load_id("gtsrb", root)
    assert data.num_classes == 43 and data.image_shape == (3, 32, 32) and not data.info.flip
    assert (len(data.train) + len(data.val), len(data.test)) == (86, 20)
    rows = [r.split(";") for r in (root / "gtsrb" / "GT-final_test.csv").read_text().splitlines()[1:]]
    assert data.test.y.tolist() == [int(r[-1]) for r in rows]  # ClassId column of the test csv
    path = root / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / rows[3][0]
    with Image.open(path) as img:
        assert img.size == (int(rows[3][1]), int(rows[3][2])) and img.size != (32, 32)
        reference = np.asarray(img.convert("RGB").resize((32, 32), Image.BILINEAR)) / 255.0
    got = _pixels(data.test.x[3:4], "gtsrb")[0].permute(1, 2, 0).numpy()
    assert np.abs(got - reference).max() < 0.25 and np.abs(got - reference).mean() < 0.03  # PIL's vs torch's filter
    assert set(data.info.default_ood) >= {"svhn", "cifar100", "tinyimagenet"}


def test_gtsrb_missing_class_folder_or_test_labels(tmp_path):
    base = write_gtsrb(tmp_path, per_class=1, n_test=3)
    (base / "GT-final_test.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"GT-final_test.csv  \[missing\]"):
        load_id("gtsrb", tmp_path)
    import shutil

    shutil.rmtree(base / "GTSRB" / "Training" / "00042")
    with pytest.raises(DatasetNotFoundError, match="42 class folders, expected the 43"):
        load_id("gtsrb", tmp_path)


# ---------------------------------------------------------------- to_model_input

def test_rgb_to_digits_matches_pil_grey_and_resize():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    info = get_info("digits")
    x = to_model_input(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255, info)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32
    reference = np.stack([np.asarray(Image.fromarray(im).convert("L").resize((8, 8), Image.BILINEAR))
                          for im in rgb]) / 255.0  # (4, 8, 8)
    assert np.abs(_pixels(x, "digits")[:, 0].numpy() - reference).max() < 2 / 255


def test_grey_to_rgb_repeats_the_channel(digits):
    x = to_model_input(_pixels(digits.test.x[:5], "digits").clamp(0, 1), get_info("cifar10"))
    assert x.shape == (5, 3, 32, 32)
    pixels = _pixels(x, "cifar10")
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5) and torch.allclose(pixels[:, 0], pixels[:, 2],
                                                                                     atol=1e-5)


@pytest.mark.parametrize("bad", [torch.full((1, 3, 8, 8), 1.5), torch.full((1, 3, 8, 8), float("nan")),
                                 torch.zeros(1, 3, 8, 8).index_fill_(3, torch.tensor([5]), float("nan")),  # one NaN
                                 torch.full((2, 1, 8, 8), 0.5).index_fill_(0, torch.tensor([1]), -1e-3),
                                 torch.full((1, 1, 8, 8), float("inf")),
                                 torch.zeros(1, 4, 8, 8), torch.zeros(3, 8, 8)])
def test_to_model_input_rejects_bad_images(bad):
    with pytest.raises(ValueError):
        to_model_input(bad, get_info("cifar10"))


def test_torchvision_names_spelled_in_ncood_are_torchvisions():
    """ncood.data spells a few torchvision constants so that registering the sets does not import torchvision."""
    from torchvision import datasets

    from ncood.data.fashion_mnist import FASHION_MNIST_CLASS
    from ncood.data.torchvision_sets import CIFAR_SOURCES

    for name, (url, folder) in CIFAR_SOURCES.items():
        assert (getattr(datasets, name).url, getattr(datasets, name).base_folder) == (url, folder)
    assert datasets.FashionMNIST.__name__ == FASHION_MNIST_CLASS


def test_importing_the_trainable_and_loading_the_default_data_imports_no_torchvision_timm_or_sklearn():
    """Every job driver, Ray trial worker and CLI call imports ncood's trainable; torchvision (with torch._dynamo) and
    timm are ~2.5 s of that import on 2 cores, and only the downloadable sets, the AdamW/ConvNeXt/CCT recipes and
    (through pytorch-ood) the ReAct/ASH scores use them: a trial worker loads torchvision at its first OoD
    evaluation, a driver or `ncood --help` never. The default data (digits, photos) reads scikit-learn's files
    without importing scikit-learn (~1.3 s of CPU per process; ncood/data/builtin.py)."""
    import subprocess
    import sys

    code = ("import sys, ncood.tune.trial, ncood.cli; from ncood.data import load_id, load_ood; "
            "d = load_id('digits', '.'); load_ood('photos', '.', like=d); "
            "print(sorted(m for m in ('torchvision', 'timm', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "[]"
