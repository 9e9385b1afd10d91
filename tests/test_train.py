"""Trainer: exact resume (every optimizer / schedule / loss), the schedules and LogitNorm, non-finite loss handling,
and the digits acceptance run through the CLI."""
import json
import math

import pytest
import torch

from ncood import keys
from ncood.cli import main
from ncood.config import make_config
from ncood.pipeline import build_trial
from ncood.train import NonFiniteLossError, logitnorm_loss, make_optimizer, make_scheduler


class Stop(Exception):
    pass


def _cfg(tmp_path, **kw):
    base = dict(width=4, epochs=4, eval_every=0, device="cpu", data_root=str(tmp_path / "data"), seed=1)
    return make_config("digits", **{**base, **kw})


RECIPES = {"sgd-step": {}, "adamw-cosine-logitnorm": {"optimizer": "adamw", "schedule": "cosine", "loss": "logitnorm"}}


@pytest.mark.parametrize("recipe", RECIPES)
def test_resume_equals_uninterrupted_training(tmp_path, recipe):
    cfg = _cfg(tmp_path, **RECIPES[recipe])
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
    losses = [[h[keys.LOSS_TRAIN] for h in t.trainer.history] for t in (straight, resumed)]
    assert losses[0] == losses[1]


def _lrs(cfg, epochs: int) -> list[float]:
    """The LR of each epoch under cfg's optimizer and schedule (stepped once per epoch, as the Trainer does)."""
    opt = make_optimizer(torch.nn.Linear(2, 2), cfg, fused=False)
    sched = make_scheduler(opt, cfg)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedules_follow_their_formulas(tmp_path):
    """step = x0.1 at the milestones; cosine = lr (1 + cos(pi (e - 1) / E)) / 2 for epoch e = 1..E (AdamW)."""
    assert _lrs(_cfg(tmp_path, epochs=6, lr_steps="2,4"), 6) == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3])
    cos = _cfg(tmp_path, epochs=6, optimizer="adamw", schedule="cosine")
    assert cos.lr == 1e-3 and cos.weight_decay == 0.05  # AdamW's defaults (ncood.config.OPTIMIZER_DEFAULTS)
    assert _lrs(cos, 6) == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)])


def test_logitnorm_loss_is_cross_entropy_of_normalized_logits():
    """Against -log softmax(f / (T ||f||))_y written out in float64; invariant to the logits' scale (Wei et al.)."""
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(32, 10, generator=g) * 5, torch.randint(0, 10, (32,), generator=g)
    t = 0.04
    u = f.double() / (t * (f.double().norm(dim=1, keepdim=True) + 1e-7))
    direct = (torch.logsumexp(u, dim=1) - u[torch.arange(32), y]).mean()
    assert logitnorm_loss(f, y, t).item() == pytest.approx(direct.item(), rel=1e-5)
    assert logitnorm_loss(7 * f, y, t).item() == pytest.approx(logitnorm_loss(f, y, t).item(), rel=1e-4)
    f.requires_grad_(True)
    logitnorm_loss(f, y, t).backward()
    assert torch.allclose((f.grad * f).sum(1), torch.zeros(32), atol=1e-6)  # no gradient along f: scale-free


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
def test_cli_digits_reaches_90_percent(tmp_path, l2, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--arch", "resnet18", "--width", "8", "--epochs", "15", "--seed", "0",
            "--out", str(out), "--data-root", str(tmp_path / "data"), "--no-progress", "--device", "cpu"]
    assert main(argv + (["--l2"] if l2 else [])) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["l2"] is l2
    assert summary["test_accuracy"] >= 0.9, summary["test_accuracy"]
    assert len(summary["epochs"]) == 15 and all(keys.LOSS_TRAIN in e for e in summary["epochs"])
    assert (out / "checkpoint.pt").exists() and (out / "gaussians.pt").exists()
    printed = capsys.readouterr().out
    assert "test accuracy" in printed


def test_cli_reports_bad_flags_clearly(tmp_path, capsys):
    assert main(["train", "--arch", "resnet7", "--out", str(tmp_path)]) == 2
    assert "unknown architecture 'resnet7'" in capsys.readouterr().err
    assert main(["train", "--arch", "convnext_tiny", "--spectral-norm", "--out", str(tmp_path)]) == 2
    assert "spectral_norm: architecture 'convnext_tiny' does not support" in capsys.readouterr().err
    assert main(["train", "--optimizer", "adam", "--out", str(tmp_path)]) == 2
    assert "optimizer='adam'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "many"])


def test_digits_summary_has_every_measurement_key(tmp_path):
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
    # the timings are logged (every epoch; the evaluation at its epochs), their size is bench/'s business
    assert all(e[keys.EPOCH_TIME] > 0 for e in summary["epochs"]) and all(e[keys.EVAL_TIME] > 0 for e in evaluated)


def test_cli_trains_cct_with_adamw_cosine_and_logitnorm(tmp_path):
    """The TMLR recipes through the CLI's flags (numbers parsed into the config), two epochs on digits."""
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--arch", "cct_7_3x1", "--width", "4", "--epochs", "2", "--out", str(out),
            "--optimizer", "adamw", "--schedule", "cosine", "--lr", "5.5e-4", "--weight-decay", "0.06",
            "--betas", "0.9,0.98", "--loss", "logitnorm", "--logitnorm-temperature", "0.05", "--l2",
            "--data-root", str(tmp_path / "data"), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    c = summary["config"]
    assert (c["lr"], c["weight_decay"], c["betas"], c["logitnorm_temperature"]) == (5.5e-4, 0.06, [0.9, 0.98], 0.05)
    assert summary["condition"] == "cct_7_3x1-w4-l2-logitnormloss-t0.05-adamw-cos-e2"
    assert all(math.isfinite(e[keys.LOSS_TRAIN]) for e in summary["epochs"]) and summary["test_accuracy"] > 0


def test_reused_data_is_one_entry_shared_across_seeds(tmp_path):
    """A reused Ray worker keeps one trial's data for the next trial with the same data settings (seeds differ),
    and drops it for other settings: never more than one data set held."""
    from ncood import pipeline

    a = build_trial(_cfg(tmp_path, epochs=1, seed=0), progress=False, reuse_data=True)
    b = build_trial(_cfg(tmp_path, epochs=1, seed=1), progress=False, reuse_data=True)
    assert b.data is a.data and b.ood_sets is a.ood_sets and len(pipeline._DATA_CACHE) == 1
    fewer = build_trial(_cfg(tmp_path, epochs=1, ood_sets=["noise"]), progress=False, reuse_data=True)
    assert fewer.data is not a.data and list(fewer.ood_sets) == ["noise"] and len(pipeline._DATA_CACHE) == 1
    torch.testing.assert_close(fewer.data.train.x, a.data.train.x)  # the same images, loaded again
    plain = build_trial(_cfg(tmp_path, epochs=1), progress=False)  # `ncood train`: loads its own, keeps nothing
    assert plain.data is not fewer.data and not pipeline._DATA_CACHE


def test_nc_every_logs_nc_between_full_evaluations(tmp_path):
    """eval_every 3 + nc_every 1: NC metrics and test accuracy at every epoch, OoD scores and time/eval_s only at the
    full evaluation (epoch 3), whose fitted scores the trial keeps; its NC values and accuracy equal a direct
    evaluate() of the final weights."""
    cfg = _cfg(tmp_path, epochs=3, eval_every=3, nc_every=1)
    trial = build_trial(cfg, progress=False)
    trial.trainer.fit()
    h = trial.trainer.history
    nc1 = keys.nc_key(keys.NC_METRICS[0])
    assert all(nc1 in e and keys.ACC_TEST in e for e in h)
    ood = [[k for k in e if keys.parse_ood_key(k)] for e in h]
    assert not ood[0] and not ood[1] and ood[2]
    assert keys.EVAL_TIME not in h[0] and keys.EVAL_TIME in h[2]
    assert trial.evaluation.last_fit is not None
    from ncood.evaluate import evaluate
    full, _ = evaluate(trial.trainer.model, trial.data, trial.ood_sets)
    assert full[nc1] == pytest.approx(h[2][nc1], rel=1e-6) and full[keys.ACC_TEST] == h[2][keys.ACC_TEST]


def test_nc_every_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="nc_every"):
        _cfg(tmp_path, nc_every=-1)
