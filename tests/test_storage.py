"""Ray Tune storage on S3: a sweep and its --resume against a local S3 server (moto's, a real HTTP S3 endpoint),
the way a cluster keeps results in a bucket (`--storage-path 's3://bucket/prefix?endpoint_override=...'`)."""
from __future__ import annotations

import json
import os

import boto3
import pytest
import ray
from mlflow.tracking import MlflowClient

from ncood import keys, tracking
from ncood.tune import SweepSettings, init_ray, run_grid
from ncood.tune.sweep import SWEEP_FILE, Storage, find_experiment

from job_scripts import load_job

BUCKET = "ncood-results"
TINY = {"epochs": [2], "width": 4, "eval_every": 2}


def test_storage_parse_local_and_uri(tmp_path):
    local = Storage.parse(str(tmp_path / "ray"))
    assert local.uri is None and local.ray_filesystem is None and local.path == str((tmp_path / "ray").resolve())
    assert local.display(local.join("exp_1")) == str((tmp_path / "ray" / "exp_1").resolve())
    s3 = Storage.parse("s3://bucket/some/prefix/?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1")
    assert s3.path == "bucket/some/prefix" and s3.ray_filesystem is s3.fs
    assert s3.display(s3.join("exp_1")) == ("s3://bucket/some/prefix/exp_1?endpoint_override=127.0.0.1:9"
                                            "&scheme=http&region=us-east-1")  # what --resume takes back


def test_a_relative_store_in_a_ray_job_copy_stops_the_job(tmp_path, monkeypatch, capsys):
    """In `ray job submit --working-dir` the job's cwd is Ray's temporary copy of the working dir: a relative
    --storage-path or --tracking-uri resolved into it, the job succeeded and its results went with the copy.
    Now exit 2 before Ray starts, naming the flag and the fix (the default stores were checked already)."""
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    with pytest.raises(FileNotFoundError, match=r"--storage-path 'runs/ray' is .*_ray_pkg_x/runs/ray, inside this "
                                                r"Ray job's temporary working-dir copy.*an absolute path"):
        Storage.parse("runs/ray")
    ablation = load_job("ablation")
    flags = ["--seeds", "1", "--epochs", "1", "--width", "2", "--quiet", "--no-aggregate", "--no-register"]
    rc = ablation.main([*flags, "--storage-path", "runs/ray", "--tracking-uri", str(tmp_path / "mlflow.db")])
    err = capsys.readouterr().err
    assert rc == 2 and "--storage-path 'runs/ray'" in err and "temporary working-dir copy" in err, err
    rc = ablation.main([*flags, "--storage-path", str(tmp_path / "ray"), "--tracking-uri", "mlruns/mlflow.db"])
    err = capsys.readouterr().err
    assert rc == 2 and "tracking URI 'mlruns/mlflow.db'" in err and "temporary working-dir copy" in err, err
    assert not (copy / "runs").exists() and not (copy / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_relative_report_folder_in_a_ray_job_copy_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """The aggregation's --out and the intervention's --aggregate-out resolved into the job's temporary copy too: the
    tables and figures vanished with the job. Now exit 2 naming the flag, before the sweep or the aggregation runs."""
    from ncood.cli import main as ncood_main

    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_y"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert ncood_main(["aggregate", "--out", "report", "--tracking-uri", str(tmp_path / "none.db")]) == 2
    err = capsys.readouterr().err
    assert "--out 'report' is" in err and "temporary working-dir copy" in err and "absolute path" in err, err
    rc = load_job("nc_intervention").main(["--aggregate-out", "report", "--tracking-uri", str(tmp_path / "none.db"),
                                           "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--aggregate-out 'report' is" in err and "temporary working-dir copy" in err, err
    assert not (copy / "report").exists() and not (tmp_path / "none.db").exists()


def test_resume_without_a_sweep_names_the_storage(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no sweep 'nothing_\*' to resume under .*--storage-path"):
        find_experiment(Storage.parse(str(tmp_path)), "nothing", "latest")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free port, a bucket, and credentials in the environment (Ray's workers inherit it:
    Ray is started after they are set)."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "RAY_ADDRESS")}
    os.environ.update(AWS_ACCESS_KEY_ID="ncood-test", AWS_SECRET_ACCESS_KEY="ncood-test",
                      AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("RAY_ADDRESS", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    client.create_bucket(Bucket=BUCKET)
    ray.shutdown()
    init_ray(num_cpus=2)
    try:
        yield f"s3://{BUCKET}/ray?endpoint_override={host}:{port}&scheme=http&region=us-east-1", client
    finally:
        ray.shutdown()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_unusable_storage_fails_before_any_run(s3, tmp_store, capsys):
    """A missing bucket or a malformed URI: exit 2 with the problem named, and no MLflow run created."""
    uri, _ = s3
    ablation = load_job("ablation")
    tracking_uri = tmp_store
    for where, said in [(uri.replace(BUCKET, "no-such-bucket"), "Bucket 'no-such-bucket' not found"),
                        (uri + "&no_such_option=1", "not a storage URI")]:
        rc = ablation.main(["--experiment", "bad-storage", "--tracking-uri", tracking_uri, "--storage-path", where,
                            "--epochs", "1", "--width", "4", "--seeds", "1", "--quiet", "--no-aggregate"])
        assert rc == 2 and said in capsys.readouterr().err
    exp = MlflowClient(tracking_uri).get_experiment_by_name("bad-storage")
    assert exp is None or not MlflowClient(tracking_uri).search_runs([exp.experiment_id])


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sweep_and_resume_on_s3(s3, tmp_store):
    uri, client = s3
    tracking_uri = tmp_store
    settings = SweepSettings(experiment="on-s3", tracking_uri=tracking_uri, storage_path=uri, progress=False,
                             max_concurrent=1)  # one reused worker: tests/test_ablation.py::_settings says why
    result = run_grid("default", TINY, seeds=1, settings=settings)
    assert not result.interrupted and result.num_errors == 0
    assert result.experiment_path.startswith(f"s3://{BUCKET}/ray/on-s3_") and "endpoint_override=" in result.experiment_path
    exp_name = result.experiment_path.split("?")[0].rsplit("/", 1)[1]
    objects = _keys(client, f"ray/{exp_name}/")
    assert f"ray/{exp_name}/{SWEEP_FILE}" in objects
    saved = json.loads(client.get_object(Bucket=BUCKET, Key=f"ray/{exp_name}/{SWEEP_FILE}")["Body"].read())
    assert saved["sweep"]["parent_run_id"] == result.ref.parent_run_id
    # Each trial's last Ray checkpoint (what a retry or --resume continues from) is in the bucket.
    ckpts = [k for k in objects if k.endswith("/checkpoint.pt") and "/checkpoint_" in k]
    assert len(ckpts) == 2, objects
    runs = tracking.child_runs(result.ref)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    parent = MlflowClient(tracking_uri).get_run(result.ref.parent_run_id)
    assert parent.data.tags[keys.TAG_RAY_EXPERIMENT] == result.experiment_path

    # --resume finds the newest sweep of the experiment by listing the bucket and restores it from there:
    # everything finished, so nothing reruns and no run is added.
    ablation = load_job("ablation")
    rc = ablation.main(["--resume", "--experiment", "on-s3", "--tracking-uri", tracking_uri,
                        "--storage-path", uri, "--quiet", "--no-aggregate"])
    assert rc == 0
    after = tracking.child_runs(result.ref)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in runs)
    assert {r.info.status for r in after} == {"FINISHED"}
