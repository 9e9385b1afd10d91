"""The `ncood` subcommands through the real entry point (ncood.cli.main): the listing subcommands, and
`train --resume` continuing a crashed trial from its checkpoint to the same result as an uninterrupted one.
(`ncood register` is tested in test_serve.py and `ncood aggregate` in test_aggregate.py, beside the stores they
read; `ncood data link` in test_fashion_mnist.py; tune_jobs/nc_intervention.py --resume in test_intervention.py.)"""
from __future__ import annotations

import json

import pytest
import torch

from ncood.cli import main
from ncood.config import make_config
from ncood.data import get_info, list_datasets
from ncood.models import list_models
from ncood.pipeline import run_trial

from job_scripts import load_job


def test_datasets_lists_every_registered_set_with_its_role(capsys):
    assert main(["datasets"]) == 0
    lines = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert sorted(lines) == list_datasets()
    assert all(role == ("ID" if get_info(name).can_be_id else "OoD") for name, role in lines.items())


def test_models_lists_every_registered_architecture(capsys):
    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == list_models()


class Crash(RuntimeError):
    pass


def _crash_at(epoch: int):
    """Epoch callback that raises at `epoch`, before that epoch's checkpoint is written (it runs first)."""
    def callback(trainer, e: int, metrics: dict[str, float]) -> None:
        if e == epoch:
            raise Crash(f"crash at epoch {e}")
    return callback


@pytest.mark.slow
def test_train_resume_continues_a_crashed_trial_to_the_uninterrupted_result(tmp_path, capsys):
    flags = ["--dataset", "digits", "--width", "4", "--epochs", "2", "--eval-every", "0", "--seed", "2",
             "--device", "cpu", "--data-root", str(tmp_path / "data"), "--no-progress"]
    crashed = tmp_path / "crashed"
    cfg = make_config("digits", width=4, epochs=2, eval_every=0, seed=2, device="cpu", data_root=str(tmp_path / "data"))
    with pytest.raises(Crash):
        run_trial(cfg, crashed, progress=False, callbacks=[_crash_at(2)])  # checkpoint.pt holds epoch 1
    assert not (crashed / "summary.json").exists()
    assert main(["train", *flags, "--out", str(crashed), "--resume"]) == 0
    resumed = json.loads((crashed / "summary.json").read_text())
    assert main(["train", *flags, "--out", str(tmp_path / "straight")]) == 0
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    for a, b in zip(resumed["epochs"], straight["epochs"]):  # the same RNG streams and weights from epoch 1 on
        assert a["loss/train"] == pytest.approx(b["loss/train"], rel=1e-5), (a["epoch"], a, b)
    assert resumed["test_accuracy"] == pytest.approx(straight["test_accuracy"], abs=1e-9)
    assert "test accuracy" in capsys.readouterr().out


def test_nc_intervention_resume_without_a_sweep_says_what_to_pass(tmp_path, capsys):
    job = load_job("nc_intervention")
    rc = job.main(["--resume", "--experiment", "abl", "--tracking-uri", str(tmp_path / "mlflow.db"),
                   "--storage-path", str(tmp_path / "ray"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "no sweep 'abl-nc-intervention_*' to resume" in err and "--storage-path" in err


def test_train_refuses_a_file_as_a_folder_before_training(tmp_path, capsys):
    """--out or --data-root naming a file (or a path under one): rc 2, the file named, nothing written."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    base = ["train", "--dataset", "digits", "--width", "4", "--epochs", "1", "--device", "cpu", "--no-progress"]
    for flags in (["--data-root", str(a_file), "--out", str(tmp_path / "out")],
                  ["--data-root", str(tmp_path / "data"), "--out", str(a_file / "run")]):
        assert main([*base, *flags]) == 2
        assert f"{a_file} is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_train_on_cuda_without_cuda_is_a_configuration_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--device", "cuda", "--no-progress",
                 "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 2
    assert "CUDA is not available; use --device cpu" in capsys.readouterr().err


def test_train_resume_from_another_trials_checkpoint_is_refused_and_keeps_it(tmp_path, capsys):
    """--resume on a folder holding another condition's checkpoint (other --epochs): rc 2, a one-line reason and
    what to do, and that checkpoint left byte for byte."""
    flags = ["train", "--dataset", "digits", "--width", "4", "--eval-every", "0", "--seed", "1", "--device", "cpu",
             "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*flags, "--epochs", "1"]) == 0
    saved = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main([*flags, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint is for resnet18-w4" in err and "-e1 seed 1, not" in err and "another folder (ncood train --out" in err
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == saved


def test_train_resume_with_another_recipe_is_refused_and_keeps_the_checkpoint(tmp_path, capsys):
    """Same condition and seed, but another batch size, BatchNorm grouping or precision: the saved epochs were trained
    otherwise, so --resume is refused with the flags that match the checkpoint, which is left byte for byte."""
    flags = ["train", "--dataset", "digits", "--width", "4", "--eval-every", "0", "--seed", "1", "--device", "cpu",
             "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--no-progress", "--epochs", "2"]
    assert main([*flags, "--batch-size", "64"]) == 0
    saved = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main([*flags, "--resume", "--bn-groups", "2", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "trained with batch_size=64 (this run: 128), bn_groups=1 (this run: 2), precision=fp32 (this run: bf16)" in err
    assert "resume with --batch-size 64 --bn-groups 1 --precision fp32" in err
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == saved
