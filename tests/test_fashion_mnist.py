"""Fashion-MNIST from Debian's package through torchvision's loader: linking, errors, the OoD sets made for it,
train_subset, the presets, and a tiny trial end to end (the real files; tests/conftest.py installs the package)."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision import datasets

from ncood import cli, keys
from ncood.config import ConfigError, make_config
from ncood.data import DatasetNotFoundError, Split, get_info, load_id, load_ood
from ncood.data import fashion_mnist as fm
from ncood.data.builtin import LETTER_CANVAS, load_letters
from ncood.data.registry import stratified_subset
from ncood.tune.grid import GRIDS, grid_conditions, make_param_space

INSTALL = "apt-get install -y dataset-fashion-mnist"


@pytest.fixture(scope="module")
def package(fashion_mnist_package):
    if not fm.source_complete():
        pytest.fail(f"Debian's Fashion-MNIST files are missing from {fm.DEBIAN_DIR} and could not be installed "
                    f"({fashion_mnist_package}); run: sudo {INSTALL}")
    return fm.DEBIAN_DIR


@pytest.fixture(scope="module")
def linked_root(package, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist-root")
    result = fm.link(root)
    assert set(result.placed.values()) == {"unpacked"} and len(result.placed) == 4
    return root


@pytest.fixture(scope="module")
def fmnist(linked_root):
    return load_id("fashion_mnist", linked_root)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _no_package(monkeypatch, tmp_path: Path) -> None:
    """This process sees no Debian package (a machine where it is not installed)."""
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "not-installed")


# ---------------------------------------------------------------- linking and loading

def test_link_unpacks_the_package_where_torchvision_reads_and_verifies(package, linked_root):
    raw = linked_root / "FashionMNIST" / "raw"
    for name, md5 in fm.RAW_MD5.items():
        path = raw / name
        assert path.is_file() and not path.is_symlink() and _md5(path) == md5
        with gzip.open(package / f"{name}.gz", "rb") as f:
            assert f.read() == path.read_bytes()  # Debian's .gz, unpacked
    assert not list(raw.glob("*.gz")) and not list(raw.glob(".ncood-link-*"))  # no .gz, no leftovers
    assert set(fm.link(linked_root).placed.values()) == {"present"}  # idempotent, nothing rewritten


def test_loader_returns_torchvisions_images_and_labels(linked_root, fmnist):
    assert (len(fmnist.train), len(fmnist.val), len(fmnist.test)) == (54_000, 6_000, 10_000)
    assert fmnist.image_shape == (1, 28, 28) and fmnist.class_names == datasets.FashionMNIST.classes
    assert torch.equal(torch.bincount(fmnist.val.y), torch.full((10,), 600))  # stratified 10% hold-out
    assert torch.equal(torch.bincount(fmnist.test.y), torch.full((10,), 1000))
    reference = datasets.FashionMNIST(str(linked_root), train=False)
    assert torch.equal(fmnist.test.y, reference.targets)
    info = fmnist.info
    pixels = fmnist.test.x * info.std[0] + info.mean[0]  # undo the normalization
    assert torch.allclose(pixels[:, 0], reference.data.float() / 255, atol=1e-5)


def test_normalization_constants_are_the_train_statistics(linked_root):
    x = datasets.FashionMNIST(str(linked_root), train=True).data.double() / 255  # (60000, 28, 28)
    info = get_info("fashion_mnist")
    assert abs(x.mean().item() - info.mean[0]) < 1e-4 and abs(x.std().item() - info.std[0]) < 1e-4
    assert info.crop_pad == 3 and info.flip and info.default_batch_size == 1024


def test_missing_package_names_the_install_and_link_commands(monkeypatch, tmp_path):
    _no_package(monkeypatch, tmp_path)
    root = tmp_path / "empty-root"
    with pytest.raises(DatasetNotFoundError) as err:
        load_id("fashion_mnist", root)
    message = str(err.value)
    assert INSTALL in message and f"ncood data link fashion-mnist --data-root {root}" in message
    assert f"{root / 'FashionMNIST' / 'raw' / 'train-images-idx3-ubyte'}  [missing]" in message
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root, on a machine with apt-get
    monkeypatch.setattr(shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    with pytest.raises(RuntimeError, match=f"sudo {INSTALL}"):  # --install says what to run instead
        fm.install_debian_package()


def test_offline_download_fails_with_the_same_error(monkeypatch, tmp_path):
    _no_package(monkeypatch, tmp_path)

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError, match="missing"):
        load_id("fashion_mnist", tmp_path / "root", download=True)


def test_loader_links_by_itself_and_repairs_a_damaged_file(package, linked_root, tmp_path, capsys):
    root = tmp_path / "fresh"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in fm.RAW_MD5:  # verified files from the module's root, except one damaged
        shutil.copyfile(linked_root / "FashionMNIST" / "raw" / name, raw / name)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00" * 10)
    data = load_id("fashion_mnist", root)
    assert len(data.test) == 10_000 and torch.equal(torch.bincount(data.test.y), torch.full((10,), 1000))
    assert _md5(raw / "t10k-labels-idx1-ubyte") == fm.RAW_MD5["t10k-labels-idx1-ubyte"]
    assert "t10k-labels-idx1-ubyte (unpacked)" in capsys.readouterr().err
    assert "train-images-idx3-ubyte (present)" in fm.link(root).describe()


def test_cli_link_symlinks_an_unpacked_source_and_refuses_a_damaged_one(linked_root, tmp_path, capsys):
    source = linked_root / "FashionMNIST" / "raw"
    root = tmp_path / "root"
    assert cli.main(["data", "link", "fashion-mnist", "--data-root", str(root), "--source", str(source)]) == 0
    assert "(symlinked)" in capsys.readouterr().out
    assert all((root / "FashionMNIST" / "raw" / name).is_symlink() for name in fm.RAW_MD5)
    assert len(load_id("fashion_mnist", root).train) == 54_000

    bad = tmp_path / "bad-source"
    bad.mkdir()
    for name in fm.RAW_MD5:
        (bad / name).symlink_to(source / name)
    (bad / "train-labels-idx1-ubyte").unlink()
    labels = bytearray((source / "train-labels-idx1-ubyte").read_bytes())
    labels[100] = (labels[100] + 1) % 10  # one label changed: a different version of the file
    (bad / "train-labels-idx1-ubyte").write_bytes(bytes(labels))
    other = tmp_path / "other-root"
    assert cli.main(["data", "link", "fashion-mnist", "--data-root", str(other), "--source", str(bad)]) == 2
    assert "does not unpack to the official train-labels-idx1-ubyte" in capsys.readouterr().err
    assert not (other / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte").exists()  # the bad copy is removed

    (bad / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks t10k-images-idx3-ubyte"):
        fm.link(tmp_path / "third-root", bad)


# ---------------------------------------------------------------- the OoD sets for Fashion-MNIST

@pytest.fixture(scope="module")
def small_fmnist(fmnist):
    """Fashion-MNIST with a 300-image test split: generated OoD sets are as large as the ID test split."""
    return dataclasses.replace(fmnist, test=Split(fmnist.test.x[:300], fmnist.test.y[:300]))


def test_default_ood_sets_come_in_the_id_format(linked_root, small_fmnist):
    assert get_info("fashion_mnist").default_ood == ("digits", "letters", "photos", "scrambled", "noise")
    info = small_fmnist.info
    for name in info.default_ood:
        x = load_ood(name, linked_root, like=small_fmnist, max_images=200)
        assert x.shape == (200, 1, 28, 28), name
        pixels = x * info.std[0] + info.mean[0]
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5, name
        assert pixels.std() > 0.05, f"{name}: (nearly) constant images"


def test_letters_are_seeded_white_on_black_glyphs(small_fmnist):
    a, b, c = (load_ood("letters", "unused", like=small_fmnist, seed=s) for s in (0, 0, 1))
    assert a.shape == (300, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)
    raw = load_letters(Path("unused"), "test", download=False, like=small_fmnist, seed=0).x  # (300, 1, 56, 56)
    assert raw.shape == (300, 1, LETTER_CANVAS, LETTER_CANVAS) and raw.dtype == torch.uint8
    ink = (raw > 64).flatten(1).float().mean(1)  # fraction of glyph pixels per image
    assert ink.min() > 0.01 and ink.max() < 0.5  # every image holds a glyph, on a mostly black background
    border = torch.cat([raw[..., :2, :].flatten(1), raw[..., -2:, :].flatten(1)], 1)
    assert border.float().mean() < 10  # black background (clipped glyph edges aside)
    assert len(torch.unique(raw.flatten(1), dim=0)) == 300  # no two images alike


# ---------------------------------------------------------------- train_subset

def test_train_subset_is_stratified_seeded_and_inside_the_train_part(fmnist, linked_root):
    sub = load_id("fashion_mnist", linked_root, train_subset=1000)
    assert len(sub.train) == 1000 and torch.equal(torch.bincount(sub.train.y), torch.full((10,), 100))
    assert torch.equal(sub.val.x, fmnist.val.x) and torch.equal(sub.test.x, fmnist.test.x)  # only train shrinks
    full = {tuple(row) for row in fmnist.train.x.flatten(1)[:, 200:260].tolist()}
    assert all(tuple(row) in full for row in sub.train.x.flatten(1)[:, 200:260].tolist())
    again = load_id("fashion_mnist", linked_root, train_subset=1000)
    assert torch.equal(sub.train.x, again.train.x)
    y = torch.arange(100) % 10
    assert torch.equal(stratified_subset(y, 100, 0), torch.arange(100))
    with pytest.raises(ValueError, match="train_subset=101"):
        stratified_subset(y, 101, 0)
    with pytest.raises(ConfigError, match="train_subset"):
        make_config("fmnist", train_subset=5)


# ---------------------------------------------------------------- presets

def test_presets_write_out_the_papers_recipe():
    cfg = make_config("fmnist")
    assert (cfg.dataset, cfg.arch, cfg.width, cfg.epochs, cfg.milestones, cfg.batch_size) == (
        "fashion_mnist", "resnet18", 64, 60, (40, 50), 1024)
    assert cfg.spectral_norm and cfg.leaky_gap and cfg.sn_coeff == 3.0 and cfg.train_subset is None
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 5e-4)
    for name, seeds in (("fmnist", 15), ("fmnist_cpu", 3)):
        shared, conditions = grid_conditions(name)
        assert GRIDS[name].seeds == seeds and shared["dataset"] == "fashion_mnist"
        assert [c["l2"] for c in conditions] == [False, True]
        assert all(c["spectral_norm"] and c["leaky_gap"] and c["arch"] == "resnet18" for c in conditions)
        space = make_param_space(name)
        assert len(space["seed"]["grid_search"]) == seeds
    shared, conditions = grid_conditions("fmnist")
    assert shared["width"] == 64 and conditions[0]["epochs"] == 60 and shared["batch_size"] == 1024
    shared, conditions = grid_conditions("fmnist_cpu")
    assert (shared["width"], shared["train_subset"], shared["batch_size"], conditions[0]["epochs"]) == (
        8, 10_000, 128, 15)


# ---------------------------------------------------------------- a tiny trial through the real loader

@pytest.mark.slow
def test_tiny_trial_on_the_debian_files(package, tmp_path):
    """What CI runs: a fresh data root (the loader links the package), 300 images, width 4, two epochs, the full
    evaluation (NC, GMM, every score) on two OoD sets (test_data.py's registry sweep loads the other ones)."""
    from ncood.pipeline import run_trial

    root = tmp_path / "data"
    cfg = make_config("fmnist", data_root=str(root), width=4, epochs=2, train_subset=300, batch_size=16,
                      eval_every=0, device="cpu", ood_sets=("digits", "letters"))
    summary = run_trial(cfg, tmp_path / "out", progress=False)
    assert fm.is_linked(root)
    final = summary["final"]
    assert 0.15 < final[keys.ACC_TEST] <= 1  # above chance (0.1) after 38 steps (0.26 measured)
    assert np.isfinite(final[keys.nc_key("nc1")]) and keys.GMM_JITTER in final
    for name in cfg.ood_sets:
        for score in ("gmm", "feature_norm", "msp"):
            assert 0 <= final[keys.ood_key(name, score, "auroc")] <= 1
    assert Path(summary["artifacts"]["checkpoint"]).is_file()


def test_cli_lists_the_new_sets(capsys):
    assert cli.main(["datasets"]) == 0  # generated sets (noise, scrambled) have no shape of their own
    out = capsys.readouterr().out
    assert "fashion_mnist  ID   1x28x28" in out and "letters        OoD  1x56x56" in out
    assert "noise          OoD  as ID" in out
