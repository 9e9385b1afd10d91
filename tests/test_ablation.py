"""The ablation and search jobs end to end on a local Ray (2 CPUs) with real MLflow stores in tmp dirs:
a tiny grid's MLflow contents, retry and FAILED marking, Ctrl+C + --resume, the Optuna/ASHA search, and
(`ray job submit` to a `ray start --head` cluster: tests/test_deploy.py)."""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray import tune

from ncood import keys, tracking
from ncood.config import ConfigError, TrialConfig
from ncood.data import DatasetNotFoundError, fashion_mnist
from ncood.ood import score_params
from ncood.tune import SweepSettings, SweepSpec, grid_conditions, make_param_space, run_grid, run_sweep
from ncood.tune import jobs
from ncood.tune.sweep import tune_keys

import faulty_trainable
from fake_datasets import accept_fake_checksums, write_all
from job_scripts import load_job

REPO = Path(__file__).resolve().parents[1]
TINY = {"epochs": [2], "width": 4, "eval_every": 1}  # digits, width-4 ResNet18: about a second per trial


def _settings(sqlite_store, name: str, **kw) -> SweepSettings:
    uri, root = sqlite_store
    # One trial at a time: with Tune's reuse_actors one worker process then runs them all, and each new worker costs
    # ~10 s of CPU for its imports on 2 cores (torch, torch._dynamo, Ray, MLflow). Trials at once are tested by
    # test_interrupt_then_resume (max_concurrent=2) and tests/test_concurrency.py.
    kw.setdefault("max_concurrent", 1)
    return SweepSettings(experiment=name, tracking_uri=uri, storage_path=str(root / "ray"), progress=False, **kw)


def _runs(uri: str, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of one experiment."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "sweep"]
    return parents, [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "trial"]


def _steps(client: MlflowClient, run, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


# ---- grids (no Ray) ----------------------------------------------------------------------------------------------
def test_presets_and_overrides():
    _, default = grid_conditions("default")
    assert [c["l2"] for c in default] == [False, True]
    space = make_param_space("default")
    assert len(space["seed"]["grid_search"]) == 15 and space["dataset"] == "digits" and space["width"] == 8
    _, table1 = grid_conditions("table1")
    assert sorted((c["arch"], c["epochs"]) for c in table1 if not c["l2"]) == [
        ("resnet18", 60), ("resnet18", 350), ("resnet50", 100), ("resnet50", 350)]
    _, table2 = grid_conditions("table2")
    assert len(table2) == 8 and {c["arch"] for c in table2} == {"resnet18"} and {c["epochs"] for c in table2} == {60}
    shared, control = grid_conditions("nc_control")
    assert sorted((c["etf_projector"], c["entropy_reg"]) for c in control) == [
        (False, 0.0), (False, 0.05), (True, 0.0), (True, 0.05)]
    assert shared["dataset"] == "cifar10" and {c["l2"] for c in control} == {False}
    _, narrowed = grid_conditions("table1", {"epochs": [2], "arch": ["resnet18"]})
    assert len(narrowed) == 2  # the two products collapse to one: duplicates are dropped
    with pytest.raises(ConfigError, match="did you mean"):
        grid_conditions("default", {"widht": 4})
    with pytest.raises(ConfigError, match="--seeds"):
        grid_conditions("default", {"seed": 3})


def test_ablation_help_and_flags():
    ablation = load_job("ablation")
    text = ablation.build_parser().format_help()
    for flag in ("--preset", "--seeds", "--epochs", "--archs", "--dataset", "--data-root", "--experiment",
                 "--tracking-uri", "--storage-path", "--gpus-per-trial", "--cpus-per-trial", "--max-concurrent",
                 "--max-failures", "--resume", "--no-aggregate", "--l2", "--keep-checkpoint-epochs"):
        assert flag in text
    args = ablation.build_parser().parse_args(["--epochs", "60,350", "--l2", "on", "--archs", "resnet50",
                                               "--ood-sets", "svhn,cifar100", "--gpus-per-trial", "0.25"])
    assert jobs.overrides_from_args(args) == {"epochs": [60, 350], "l2": [True], "arch": ["resnet50"],
                                              "ood_sets": ("svhn", "cifar100")}
    assert jobs.settings_from_args(args, "ablation").gpus_per_trial == 0.25


BAD_VALUES = [  # (argv, argparse's message)
    (["--l2", "maybe"], "argument --l2: expected on or off, got 'maybe'"),
    (["--spectral-norm", "on,maybe"], "argument --spectral-norm: expected on or off, got 'maybe'"),
    (["--leaky-gap", "off", "maybe"], "argument --leaky-gap: expected on or off, got 'maybe'"),
    (["--etf-projector", "maybe"], "argument --etf-projector: expected on or off, got 'maybe'"),
    (["--entropy-reg", "abc"], "argument --entropy-reg: invalid float value: 'abc'"),
    (["--epochs", "60,abc"], "argument --epochs: invalid int value: '60,abc'"),
    (["--keep-checkpoint-epochs", "x"], "argument --keep-checkpoint-epochs: invalid int value: 'x'"),
]


@pytest.mark.parametrize("script", ["ablation", "search"])
@pytest.mark.parametrize("argv, says", BAD_VALUES, ids=[argv[0] for argv, _ in BAD_VALUES])
def test_bad_flag_values_are_usage_errors(script, argv, says, capsys):
    """A bad list value is argparse's usage error naming the flag (exit 2, as `ncood train --l2 maybe`), not a
    traceback from converting it after parsing."""
    with pytest.raises(SystemExit) as exit_:
        load_job(script).main([*argv, "--dry-run"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"error: {says}" in err, err


@pytest.mark.parametrize("script, argv", [("ablation", ["--seeds", "1", "--no-register", "--no-aggregate"]),
                                          ("search", ["--trials", "1"])], ids=["ablation", "search"])
def test_missing_data_stops_the_job_before_ray_and_mlflow(script, argv, tmp_path, capsys):
    """The message `ncood train` gives for each missing dataset, exit 2, and no MLflow store, Ray storage or data
    root created: not a sweep whose every trial fails on it inside Ray."""
    root, store, storage = tmp_path / "data", tmp_path / "mlflow.db", tmp_path / "ray"
    code = load_job(script).main([*argv, "--preset", "table1", "--epochs", "1", "--data-root", str(root),
                                  "--tracking-uri", f"sqlite:///{store}", "--storage-path", str(storage), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    for name in ("cifar10", "svhn", "cifar100", "tinyimagenet"):  # the ID set and its OoD sets, all at once
        assert f"dataset '{name}' not found or incomplete under data root {root}." in err
    assert f"{root}/cifar-10-batches-py/data_batch_1  [missing]" in err and "How to get it:" in err
    assert not root.exists() and not store.exists() and not storage.exists()


def test_data_check_passes_what_the_trials_can_load(tmp_path, monkeypatch):
    """Offline sets need no data root; Fashion-MNIST passes when Debian's package is there (the trial links it; the
    check creates nothing); the downloadable sets pass once their files are there, as ID and as OoD sets."""
    empty = tmp_path / "empty"
    jobs.check_data(*grid_conditions("default", {"data_root": str(empty)}))
    fmnist = grid_conditions("fmnist_cpu", {"data_root": str(empty)})
    if fashion_mnist.source_complete():  # conftest installs the package where it can
        jobs.check_data(*fmnist)
    else:  # the loader's own message, with the install and link commands
        with pytest.raises(DatasetNotFoundError, match=re.escape(fashion_mnist.INSTALL_COMMAND)):
            jobs.check_data(*fmnist)
    assert not empty.exists()
    jobs.check_data(*grid_conditions("table1", {"data_root": str(empty), "download": True}))  # trials fetch it
    root = write_all(tmp_path / "data")
    accept_fake_checksums(monkeypatch, root)
    for preset in ("table1", "tmlr_gtsrb", "tmlr_tinyimagenet", "tmlr_cifar100"):
        jobs.check_data(*grid_conditions(preset, {"data_root": str(root)}))
    (root / "tiny-imagenet-200" / "wnids.txt").unlink()  # the class list: needed to train on it, not as OoD set
    jobs.check_data(*grid_conditions("table1", {"data_root": str(root)}))
    with pytest.raises(DatasetNotFoundError, match=r"(?s)'tinyimagenet' not found.*wnids.txt  \[missing\]"):
        jobs.check_data(*grid_conditions("tmlr_tinyimagenet", {"data_root": str(root)}))


def test_data_check_on_a_cluster_only_warns(tmp_path, monkeypatch, capsys):
    """With RAY_ADDRESS the trials read the workers' disks, which the driver may not see: a warning naming the
    sets, and the sweep goes on."""
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    jobs.check_data(*grid_conditions("table1", {"data_root": str(tmp_path / "data")}))
    err = capsys.readouterr().err
    assert "warning: the driver does not see these datasets" in err and "dataset 'cifar10' not found" in err


def test_summary_table_keeps_early_stops_out_of_finished_and_the_means(tmp_store):
    """Real runs in a sqlite store: a full run, one ASHA stopped (FINISHED, tagged), one failed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tmp_store)
    exp = client.create_experiment("search")
    for accuracy, status, tags in ((0.9, "FINISHED", {}), (0.1, "FINISHED", {keys.TAG_STOPPED_EARLY: "1"}),
                                   (0.2, "FAILED", {})):
        run = client.create_run(exp, tags={keys.TAG_CONDITION: "c", **tags})
        client.log_metric(run.info.run_id, keys.ACC_TEST, accuracy)
        client.set_terminated(run.info.run_id, status)
    runs = client.search_runs([exp])
    row = jobs.summary_table(runs).splitlines()[1].split()
    assert row[:5] == ["c", "1", "1", "1", "0"] and row[5] == "0.9000", row  # finished, early, failed, other, mean


def test_summary_table_lists_the_ood_sets_in_the_trials_order(tmp_store):
    """The OoD columns follow the trials' ood_sets param, not the order a store returns the metrics in (a server
    sorts them by name, sqlite keeps the logged order; both are noise, photos, scrambled here)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tmp_store)
    exp = client.create_experiment("order")
    for seed in range(2):
        run = client.create_run(exp, tags={keys.TAG_CONDITION: "c"})
        client.log_param(run.info.run_id, "ood_sets", "scrambled,photos,noise")
        for i, ood in enumerate(["noise", "photos", "scrambled"]):
            client.log_metric(run.info.run_id, keys.ood_key(ood, "gmm", "auroc"), 0.5 + i / 10)
        client.set_terminated(run.info.run_id, "FINISHED")
    head, row = jobs.summary_table(client.search_runs([exp])).splitlines()
    assert head.split("  ")[-3:] == ["gmm AUROC scrambled", "gmm AUROC photos", "gmm AUROC noise"], head
    assert row.split()[-3:] == ["0.7000", "0.6000", "0.5000"]


# ---- local Ray -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_grid(local_ray, sqlite_store):
    """2 seeds x L2 off/on, 2 epochs, evaluation every epoch, epoch-1 checkpoint kept in MLflow."""
    result = run_grid("default", TINY, seeds=2, settings=_settings(sqlite_store, "tiny", keep_checkpoint_epochs=(1,)))
    return result, sqlite_store[0]


@pytest.mark.slow  # the first user of tiny_grid: the grid's 4 trials run in its set-up
@pytest.mark.timeout(300)
def test_tiny_grid_parent_and_children(tiny_grid):
    result, uri = tiny_grid
    parents, children = _runs(uri, "tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_id == result.ref.parent_run_id
    assert parents[0].data.params["gpus_per_trial"] == "0"  # logged once Ray said it has no GPU
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags[MLFLOW_PARENT_RUN_ID] == result.ref.parent_run_id for r in children)
    assert sorted(r.info.run_name for r in children) == sorted(
        f"resnet18-w4-{l2}-sn-lg-e2-s{s}" for l2 in ("l2", "nol2") for s in (0, 1))
    for r in children:
        assert r.info.run_name == f"{r.data.tags[keys.TAG_CONDITION]}-s{r.data.tags[keys.TAG_SEED]}"
        assert r.data.tags[keys.TAG_TRIAL_ID]
    assert not result.interrupted and result.num_errors == 0 and jobs.exit_code(result) == 0


def test_tiny_grid_params_metrics_artifacts(tiny_grid):
    _, uri = tiny_grid
    client = MlflowClient(uri)
    _, children = _runs(uri, "tiny")
    # config (but where it ran: tags) + effective milestones + score hyperparameters
    param_names = (set(TrialConfig.__dataclass_fields__) - set(tracking.MACHINE_FIELDS) | {tracking.PARAM_MILESTONES}
                   | set(score_params()))
    for r in children:
        assert set(r.data.params) == param_names  # one compare view: the same params everywhere
        assert r.data.params[tracking.PARAM_MILESTONES] == "1,2" and r.data.tags["device"] == "cpu"
        # MLflow's standard fields: context tags (from the driver), dataset inputs, system metrics
        assert r.data.tags["mlflow.source.type"] == "LOCAL" and r.data.tags["mlflow.user"]
        inputs = {d.dataset.name: [t.value for t in d.tags] for d in r.inputs.dataset_inputs}
        assert inputs == {"digits-train": ["train"], "digits-val": ["validation"], "digits-test": ["test"],
                          **{o: ["ood"] for o in ("photos", "scrambled", "noise")}}
        assert all(len(d.dataset.digest) == 16 for d in r.inputs.dataset_inputs)
        assert "system/system_memory_usage_megabytes" in r.data.metrics
        assert r.data.params["epochs"] == "2" and r.data.params["width"] == "4"
        for key in (keys.ACC_TEST, keys.nc_key("nc1"), keys.ood_key("photos", "gmm", "auroc"), keys.LOSS_TRAIN):
            assert _steps(client, r, key) == [1, 2], key
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"checkpoint.pt", "config.json", "summary.json", "checkpoints"} <= artifacts
        assert "gaussians.pt" not in artifacts  # logged once, inside the ood_scorer model (tests/test_serve.py)
        assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")] == ["checkpoints/epoch_001.pt"]
    assert len({frozenset(r.data.metrics) for r in children}) == 1  # the same metric names in every run


def test_tiny_grid_summary(tiny_grid):
    result, _ = tiny_grid
    table = jobs.summary_table(result.runs)
    assert "resnet18-w4-l2-sn-lg-e2" in table and "gmm AUROC photos" in table
    assert [line.split()[1:4] for line in table.splitlines()[1:]] == [["2", "0", "0"], ["2", "0", "0"]]


def test_tune_results_carry_only_what_tune_uses(tiny_grid):
    """Each Tune result holds `epoch` and the progress table's metrics; the trial's MLflow run holds every metric
    (TrialRuntime.tune_result: Tune's driver handles every key of every result several times)."""
    result, uri = tiny_grid
    _, children = _runs(uri, "tiny")
    logged = set(children[0].data.metrics)
    files = sorted(Path(result.experiment_path).glob("*/result.json"))
    assert len(files) == 4 and len(logged) > 100
    for f in files:
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
        reported = {k for r in rows for k in r if k in logged}
        # run_grid's columns: loss, test accuracy, GMM AUROC of the first OoD set (digits' first: photos)
        assert reported == {keys.LOSS_TRAIN, keys.ACC_TEST, keys.ood_key("photos", "gmm", "auroc")}


def test_tune_keys_are_the_columns_and_the_optimized_metrics():
    from ray.tune.schedulers import ASHAScheduler

    spec = SweepSpec(metric_columns={keys.LOSS_TRAIN: "loss", keys.ACC_VAL: "val acc"},
                     tune_extra={"metric": keys.ACC_VAL, "mode": "max",
                                 "scheduler": ASHAScheduler(metric=keys.ACC_TEST, mode="max", time_attr="epoch")})
    assert tune_keys(spec) == (keys.LOSS_TRAIN, keys.ACC_VAL, keys.ACC_TEST, "epoch")  # + ASHA's time_attr
    assert tune_keys(SweepSpec(tune_extra={"metric": [keys.ACC_VAL, keys.LOSS_TRAIN]})) == (  # multi-objective
        keys.ACC_VAL, keys.LOSS_TRAIN)
    assert tune_keys(SweepSpec()) == ()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failure_retried_from_checkpoint_and_failed_marked(local_ray, sqlite_store, tmp_path):
    """seed 0 raises once at epoch 2 (retried from its epoch-1 checkpoint), seed 1 raises at every attempt,
    seed 2 is healthy: the grid finishes, with FINISHED / FAILED runs and no repeated metric step."""
    space = make_param_space("default", {**TINY, "epochs": [3], "l2": [False]}, seeds=3)
    space[faulty_trainable.FAULT_KEY] = [{"epoch": 2, "seeds": [0], "marker_dir": str(tmp_path / "markers")},
                                         {"epoch": 2, "seeds": [1]}]
    faulty_trainable.by_value()
    result = run_sweep(_settings(sqlite_store, "failures", retries=1),
                       SweepSpec(space, trainable=faulty_trainable.failing_trial))
    uri = sqlite_store[0]
    client = MlflowClient(uri)
    parents, children = _runs(uri, "failures")
    by_seed = {int(r.data.tags[keys.TAG_SEED]): r for r in children}
    assert len(children) == 3 and parents[0].info.status == "FINISHED" and result.num_errors == 1
    retried, failed, healthy = by_seed[0], by_seed[1], by_seed[2]
    assert retried.info.status == "FINISHED" and retried.data.tags[keys.TAG_RESTARTS] == "1"
    assert "InjectedFailure" in retried.data.tags[keys.TAG_PREVIOUS_ERROR]
    for key in retried.data.metrics:  # the retry continued the same run: one value per step, none twice
        if not key.startswith(keys.SYSTEM_PREFIX):  # MLflow's system metrics count samples, not epochs
            assert _steps(client, retried, key) == [1, 2, 3], key
    assert failed.info.status == "FAILED" and "InjectedFailure" in failed.data.tags[keys.TAG_ERROR]
    assert _steps(client, failed, keys.LOSS_TRAIN) == [1]
    assert healthy.info.status == "FINISHED"
    assert jobs.exit_code(result) == 1


class InterruptOnce(tune.Callback):
    """Ctrl+C for real: SIGINT to this driver when the first trial completes (Tune's handler stops the sweep and
    saves its state). A marker file makes it fire once: Tune pickles callbacks, so the resumed sweep has it too."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_interrupt_then_resume(local_ray, sqlite_store, tmp_path):
    """Two trials at a time, one short (2 epochs) beside one long (5): Ctrl+C when the short one finishes cuts
    the long one mid-run and leaves two pending. `ablation.py --resume` must finish all four, each in exactly one
    run, without rerunning (or relogging) the finished one and without leaving anything RUNNING."""
    uri = sqlite_store[0]
    settings = _settings(sqlite_store, "interrupt", max_concurrent=2)
    result = run_grid("default", {**TINY, "epochs": [2, 5]}, seeds=1, settings=settings,
                      callbacks=[InterruptOnce(str(tmp_path / "interrupted"))])
    assert result.interrupted and jobs.exit_code(result) == 130
    client = MlflowClient(uri)
    parents, before = _runs(uri, "interrupt")
    assert parents[0].info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for r in before}
    finished = {r.info.run_id: client.get_metric_history(r.info.run_id, keys.LOSS_TRAIN)
                for r in before if r.info.status == "FINISHED"}
    assert finished and len(before) < 4
    # What `ray job stop` leaves besides (the driver's SystemExit in the sweep run's `error` tag): after the resume
    # the sweep is FINISHED, and the old error only its `previous_error`.
    client.set_tag(parents[0].info.run_id, keys.TAG_ERROR, "SystemExit: 15")

    ablation = load_job("ablation")
    rc = ablation.main(["--resume", "--experiment", "interrupt", "--storage-path", str(sqlite_store[1] / "ray"),
                        "--quiet", "--no-aggregate"])  # the newest sweep of the experiment: the one just cut off
    assert rc == 0
    parents, after = _runs(uri, "interrupt")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tags = parents[0].data.tags
    assert keys.TAG_ERROR not in tags and tags[keys.TAG_PREVIOUS_ERROR] == "SystemExit: 15"
    names = sorted(r.info.run_name for r in after)
    assert names == sorted(f"resnet18-w4-{l2}-sn-lg-e{e}-s0" for l2 in ("l2", "nol2") for e in (2, 5))  # no duplicates
    assert {r.info.status for r in after} == {"FINISHED"}
    for run_id, history in finished.items():  # finished before the interrupt: untouched
        assert client.get_metric_history(run_id, keys.LOSS_TRAIN) == history
        assert keys.TAG_RESTARTS not in client.get_run(run_id).data.tags
    for r in after:
        epochs = int(r.data.params["epochs"])
        assert _steps(client, r, keys.LOSS_TRAIN) == list(range(1, epochs + 1))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_search_six_trials(local_ray, sqlite_store):
    search = load_job("search")
    uri, root = sqlite_store
    rc = search.main(["--trials", "6", "--epochs", "3", "--width", "4", "--experiment", "search", "--tracking-uri", uri,
                      "--storage-path", str(root / "ray"), "--quiet", "--max-concurrent", "1"])  # see _settings
    assert rc == 0
    parents, children = _runs(uri, "search")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6 and {r.info.status for r in children} == {"FINISHED"}
    assert len({(r.data.params["lr"], r.data.params["weight_decay"]) for r in children}) == 6
    assert all(keys.ACC_VAL in r.data.metrics for r in children)
    # ASHA's stops end FINISHED but are not full runs: counted apart in the sweep's tags and the closing table
    early = sum(keys.TAG_STOPPED_EARLY in r.data.tags for r in children)
    tags = parents[0].data.tags
    assert (tags["trials_finished"], tags["trials_stopped_early"]) == (str(6 - early), str(early))
    rows = [line.split() for line in jobs.summary_table(children).splitlines()[1:]]
    assert [row[1:3] for row in rows] == [[str(6 - early), str(early)]]
