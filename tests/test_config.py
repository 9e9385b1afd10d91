"""TrialConfig: presets, derived milestones and validation with clear messages."""
import dataclasses

import pytest

from ncood.config import ConfigError, TrialConfig, lr_milestones, make_config


@pytest.mark.parametrize("epochs,expected", [(60, (40, 50)), (100, (75, 90)), (350, (150, 250)), (15, (10, 12)),
                                             (3, (2, 2))])
def test_milestones_follow_the_papers(epochs, expected):
    assert lr_milestones(epochs) == expected
    assert make_config("digits", epochs=epochs).milestones == expected


def test_dataset_defaults_fill_batch_size_and_ood_sets():
    cfg = make_config("digits")
    assert cfg.batch_size == 128 and cfg.ood_sets == ("photos", "scrambled", "noise")
    cifar = make_config("cifar10")
    assert cifar.batch_size == 1024 and cifar.ood_sets[:3] == ("svhn", "cifar100", "tinyimagenet")
    assert cifar.width == 64 and cifar.epochs == 60


@pytest.mark.parametrize("override,match", [
    (dict(arch="resnet19"), "unknown architecture 'resnet19'"),
    (dict(epochs=0), "epochs=0"),
    (dict(sn_coeff=0.0), "sn_coeff"),
    (dict(dataset="mnist"), "dataset"),
    (dict(dataset="noise"), "OoD-only"),
    (dict(ood_sets=("svhn", "nope")), "ood_sets"),
    (dict(width=0), "width"),
    (dict(device="tpu"), "device"),
])
def test_invalid_values_are_rejected_with_the_field_named(override, match):
    with pytest.raises(ConfigError, match=match):
        make_config("digits", **override)


def test_unknown_override_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        make_config("digits", epoch=3)
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("imagenet")


def test_roundtrip_and_condition_key(tmp_path):
    cfg = make_config("digits", l2=True, spectral_norm=True, leaky_gap=True, seed=3, data_root=str(tmp_path))
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.condition == "resnet18-w8-l2-sn-lg-e15"
    assert make_config("digits").condition == "resnet18-w8-nol2-sn-lg-e15"  # the papers' model by default
    plain = make_config("digits", spectral_norm=False, leaky_gap=False)  # the Table 2 ablation's plain network
    assert plain.condition == "resnet18-w8-nol2-e15"
    assert make_config("digits", label_smoothing=0.1).condition == "resnet18-w8-nol2-sn-lg-ls0.1-e15"
    assert cfg.replace(seed=4).seed == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]

