"""Trainer: exact resume, non-finite loss handling, and the digits acceptance run through the CLI."""
import json
import time

import pytest
import torch

from ncood import keys
from ncood.cli import main
from ncood.config import make_config
from ncood.pipeline import build_trial
from ncood.train import NonFiniteLossError


class Stop(Exception):
    pass


def _cfg(tmp_path, **kw):
    base = dict(width=4, epochs=4, eval_every=0, device="cpu", data_root=str(tmp_path / "data"), seed=1)
    return make_config("digits", **{**base, **kw})


def test_resume_equals_uninterrupted_training(tmp_path):
    cfg = _cfg(tmp_path)
    straight = build_trial(cfg, progress=False)
    straight.trainer.fit()

    ckpt = tmp_path / "ckpt.pt"

    def stop_after_two(trainer, epoch, metrics):
        trainer.save_checkpoint(ckpt)
        if epoch == 2:
            raise Stop  # the process "dies" after the epoch-2 checkpoint

    first = build_trial(cfg, callbacks=[stop_after_two], progress=False)
    with pytest.raises(Stop):
        first.trainer.fit()
    torch.manual_seed(12345)  # a fresh process would have other global RNG state: the checkpoint must restore it
    resumed = build_trial(cfg, progress=False)
    resumed.trainer.load_checkpoint(ckpt)
    assert resumed.trainer.epoch == 2
    resumed.trainer.fit()

    a, b = straight.trainer.model.state_dict(), resumed.trainer.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [h[keys.LOSS_TRAIN] for h in straight.trainer.history] == [h[keys.LOSS_TRAIN] for h in resumed.trainer.history]


def test_checkpoint_for_another_trial_is_refused(tmp_path):
    trial = build_trial(_cfg(tmp_path, epochs=1), progress=False)
    trial.trainer.fit()
    trial.trainer.save_checkpoint(tmp_path / "c.pt")
    other = build_trial(_cfg(tmp_path, epochs=1, seed=2), progress=False)
    with pytest.raises(ValueError, match="seed 1"):
        other.trainer.load_checkpoint(tmp_path / "c.pt")


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    trial = build_trial(_cfg(tmp_path, epochs=2), progress=False)
    trial.data.train.x[:] = float("nan")  # corrupt input: every step's loss is NaN
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 0"):
        trial.trainer.fit()


@pytest.mark.parametrize("l2", [False, True])
def test_cli_digits_reaches_90_percent_in_under_a_minute(tmp_path, l2, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--arch", "resnet18", "--width", "8", "--epochs", "15", "--seed", "0",
            "--out", str(out), "--data-root", str(tmp_path / "data"), "--no-progress", "--device", "cpu"]
    t0 = time.perf_counter()
    assert main(argv + (["--l2"] if l2 else [])) == 0
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["l2"] is l2
    assert summary["test_accuracy"] >= 0.9, summary["test_accuracy"]
    assert len(summary["epochs"]) == 15 and all(keys.LOSS_TRAIN in e for e in summary["epochs"])
    assert (out / "checkpoint.pt").exists() and (out / "gaussians.pt").exists()
    assert wall < 60, wall
    printed = capsys.readouterr().out
    assert "test accuracy" in printed


def test_cli_reports_bad_flags_clearly(tmp_path, capsys):
    assert main(["train", "--arch", "resnet7", "--out", str(tmp_path)]) == 2
    assert "unknown architecture 'resnet7'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "many"])


def test_digits_summary_has_every_measurement_key_and_evaluation_is_cheaper_than_an_epoch(tmp_path):
    """Issue 3 acceptance: width-8 ResNet18, 15 epochs on digits; every key for photos/scrambled/noise."""
    from ncood.ood import SCORES
    from ncood.pipeline import run_trial

    cfg = make_config("digits", width=8, epochs=15, eval_every=5, device="cpu", data_root=str(tmp_path / "d"))
    summary = run_trial(cfg, tmp_path / "run", progress=False)
    final = summary["final"]
    expected = {keys.LOSS_TRAIN, keys.ACC_TRAIN, keys.ACC_TEST, keys.GMM_JITTER, keys.GMM_DEGENERATE_DIMS}
    expected |= {keys.nc_key(m) for m in keys.NC_METRICS}
    expected |= {keys.ood_key(s, c, m) for s in ("photos", "scrambled", "noise") for c in SCORES
                 for m in keys.DETECTION_METRICS}
    assert expected <= set(final), sorted(expected - set(final))
    evaluated = [e for e in summary["epochs"] if keys.EVAL_TIME in e]
    assert [e["epoch"] for e in evaluated] == [5, 10, 15]
    # Evaluation (train features + NC + GMM + 6 scores x 3 sets) vs the training epoch it follows, same process.
    eval_s = sorted(e[keys.EVAL_TIME] for e in evaluated)[1]
    epoch_s = sorted(e[keys.EPOCH_TIME] for e in summary["epochs"])[len(summary["epochs"]) // 2]
    assert eval_s < epoch_s, (eval_s, epoch_s)
