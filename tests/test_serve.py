"""Serving end to end: a tiny digits trial logged as `ood_scorer`, `ncood register` picking the median seed of the
best condition, and the real `mlflow models serve --env-manager local` answering base64 PNGs (ID digits and OoD
photo patches) with the in-process scores, and rejecting bad input with HTTP 400 while it keeps serving.

One sqlite store, one trained model and one server per module (the server's start-up is the main cost)."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from ncood import keys, tracking
from ncood.config import make_config
from ncood.data import to_model_input
from ncood.data.builtin import load_photos
from ncood.evaluate import feature_pass
from ncood.models import spectral_norm_layers
from ncood.ood import SCORES, compute_scores, served_scores
from ncood.pipeline import build_trial
from ncood.serve import Scorer, ScorerSpec, encode_png, log_ood_scorer, threshold_at_tpr
from ncood.serve.register import format_registration, register_best
from ncood.serve.scorer import OUTPUT_COLUMNS, score_columns
from ncood.serve.server import free_port, local_server, ping
from sweep_procs import stop_group

EXPERIMENT = "serve-test"
LIMITS = {"max_images": 40, "max_image_bytes": 60_000, "max_pixels": 100_000}  # NCOOD_SERVING_LIMITS override
REQUEST_LIMITS = {"max_body_bytes": 2_000_000}  # NCOOD_REQUEST_LIMITS (ncood.serve.guard), in front of MLflow
N_EACH = 16  # ID digits and OoD photo patches per good request


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- the trained, logged and registered model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(sqlite_store):
    """A sqlite store in tmp; also the process default, so nothing falls back to ./mlflow.db."""
    uri, root = sqlite_store
    exp_id = tracking.prepare_experiment(EXPERIMENT, uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri, exp_id, root


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """A tiny digits trial run as the Ray trainable runs it (own MLflow run, one batch per epoch), then logged."""
    uri, exp_id, _ = store
    ref = tracking.start_sweep(uri, exp_id, "sweep", {"grid": "test"}, {keys.TAG_KIND: "ablation"})
    cfg = make_config("digits", width=4, epochs=3, device="cpu", data_root=str(tmp_path_factory.mktemp("data")))
    tracker = tracking.TrialTracker(ref, cfg, trial_id="serve_00000")
    run_id = tracker.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a width-4 net gains nothing from 2 threads; OpenMP spin-waits stall on a busy host
    try:
        trial = build_trial(cfg, callbacks=[lambda tr, epoch, m: tracker.log_epoch(epoch, m)], progress=False)
        trial.trainer.fit()
        path, env = list(sys.path), dict(os.environ)
        info = log_ood_scorer(trial, run_id, uri)
        # The trial process is left as it was (Ray reuses it for the next trial): grad mode, sys.path, env.
        assert torch.is_grad_enabled() and sys.path == path and dict(os.environ) == env
    finally:
        torch.set_num_threads(threads)
    tracker.finish()
    return trial, ref, run_id, info


def test_logged_model(trained, store):
    trial, _, run_id, info = trained
    uri = store[0]
    client = MlflowClient(uri)
    logged = client.get_logged_model(info.model_id)
    assert logged.name == "ood_scorer" and logged.source_run_id == run_id and str(logged.status).endswith("READY")
    # linked to its run (link_to_run): a run output at the last epoch, the run's latest metrics as model metrics
    run = client.get_run(run_id)
    assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(info.model_id, trial.cfg.epochs)]
    model_metrics = {m.key: m.value for m in logged.metrics}
    assert model_metrics == {m.key: m.value for m in run.data._metric_objs if m.step == trial.cfg.epochs}
    assert keys.ACC_TEST in model_metrics and all(m.step == trial.cfg.epochs for m in logged.metrics)
    history = client.get_metric_history(run_id, keys.ACC_TEST)  # the link adds no second entry at that step
    steps = [m.step for m in history]
    assert trial.cfg.epochs in steps and len(steps) == len(set(steps)), steps
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{info.model_id}", tracking_uri=uri))
    spec = ScorerSpec.load(local / "artifacts" / "scorer.json")
    assert spec.image_shape == (1, 8, 8) and spec.class_names == tuple(str(i) for i in range(10))
    assert spec.mean == trial.data.info.mean and spec.feature_space == "input" and spec.format == 2
    assert spec.scores == served_scores() and "knn" in SCORES and "knn" not in spec.scores  # KNN: the train bank
    assert spec.score_params["ash"] == {"variant": "ash-b", "percentile": 0.9}
    weights = torch.load(local / "artifacts" / "weights.pt", weights_only=True)
    assert set(weights) == set(trial.trainer.model.state_dict())  # the network only: no optimizer state
    reqs = (local / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in reqs} >= {"mlflow", "torch", "torchvision", "numpy", "pillow", "pytorch-ood"}
    assert (local / "code" / "ncood" / "serve" / "scorer.py").exists()  # ships its code (build-docker)
    assert sum(p.stat().st_size for p in local.rglob("*") if p.is_file()) < 2e6
    # The threshold accepts 95% of the ID validation images under the served (fp32) scores.
    art = local / "artifacts"
    scorer = Scorer.from_files(art / "scorer.json", art / "weights.pt", art / "gaussians.pt", art / "scores.pt")
    val_gmm = scorer.score(trial.data.val.x)["gmm_log_density"]
    assert spec.threshold_n_val == len(val_gmm) and np.mean(val_gmm >= spec.threshold) >= 0.95
    # equal, not close: the served network (spectral norms frozen at load) computes the trial's own scores
    assert spec.threshold == threshold_at_tpr(val_gmm)
    convs = list(spectral_norm_layers(scorer.model))
    assert convs and all(c.sn_frozen is not None for c in convs) and not scorer.model.training
    # The pyfunc itself (as the server loads it), in process.
    model = mlflow.pyfunc.load_model(f"models:/{info.model_id}")
    example = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]["data"][0][0]
    out = model.predict(pd.DataFrame({"image": [example]}))
    assert list(out.columns) == list(OUTPUT_COLUMNS) and len(out) == 1
    # The response frame: the scorer's arrays as pandas frames them by default, value for value, dtype for dtype.
    request = [example, encode_png(np.zeros((8, 8), np.uint8)), example]
    want = pd.DataFrame(scorer.score_base64(request), columns=list(OUTPUT_COLUMNS))
    pd.testing.assert_frame_equal(model.predict(pd.DataFrame({"image": request})), want, check_exact=True)
    assert (want.dtypes.iloc[:-2] == np.float64).all() and want.dtypes.iloc[-1] == bool
    assert OUTPUT_COLUMNS[:2] == ("gmm_log_density", "feature_norm") and OUTPUT_COLUMNS[-2:] == ("predicted_class",
                                                                                                 "is_ood")
    assert {"mahalanobis", "vim", "react", "ash", "neco", "energy"} <= set(OUTPUT_COLUMNS)
    meta = mlflow.models.get_model_info(f"models:/{info.model_id}")
    assert meta.metadata["ncood"]["response_columns"] == list(OUTPUT_COLUMNS)
    assert [c.name for c in meta.signature.outputs.inputs] == list(OUTPUT_COLUMNS)
    with pytest.raises(mlflow.exceptions.MlflowException, match="row 0: not valid base64"):
        model.predict(pd.DataFrame({"image": ["%%%"]}))


def test_prepare_batches_same_sized_images_in_request_order(trained, store):
    """Scorer.prepare runs to_model_input once per group of same-sized images; the rows come back in request order
    and equal the image-by-image preparation."""
    _, _, _, info = trained
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{info.model_id}", tracking_uri=store[0])) / "artifacts"
    scorer = Scorer.from_files(local / "scorer.json", local / "weights.pt", local / "gaussians.pt", local / "scores.pt")
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, c, s, s, generator=g) for c, s in ((1, 8), (3, 20), (1, 8), (3, 5), (3, 20), (1, 12))]
    want = torch.cat([to_model_input(x, scorer.info) for x in images])
    torch.testing.assert_close(scorer.prepare(images), want)
    torch.testing.assert_close(scorer.prepare(images[:1] * 3), want[:1].expand(3, -1, -1, -1))


def test_format1_package_still_serves_its_four_columns(trained, store, tmp_path):
    """A scorer.json written before the post-hoc scores (format 1: no scores list, GMM space "raw"/"l2", no
    scores.pt) loads and serves gmm_log_density, feature_norm, msp, max_logit as it did."""
    trial, _, _, info = trained
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{info.model_id}", tracking_uri=store[0])) / "artifacts"
    old = json.loads((local / "scorer.json").read_text())
    for k in ("scores", "score_params"):
        old.pop(k)
    old.update(format=1, feature_space="raw")
    (tmp_path / "scorer.json").write_text(json.dumps(old))
    legacy = Scorer.from_files(tmp_path / "scorer.json", local / "weights.pt", local / "gaussians.pt")
    new = Scorer.from_files(local / "scorer.json", local / "weights.pt", local / "gaussians.pt", local / "scores.pt")
    got, want = legacy.score(trial.data.val.x[:5]), new.score(trial.data.val.x[:5])
    assert legacy.columns == ("gmm_log_density", "feature_norm", "msp", "max_logit", "predicted_class", "is_ood")
    for col in ("gmm_log_density", "feature_norm", "msp", "max_logit", "is_ood"):
        np.testing.assert_array_equal(got[col], want[col])
    old["format"] = 7
    (tmp_path / "scorer.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="scorer spec format 7; this ncood reads formats"):
        ScorerSpec.load(tmp_path / "scorer.json")


@pytest.fixture(scope="module")
def registered(trained, store):
    """Two more seeds around the real run's value in its condition and a worse condition, then `register`."""
    trial, ref, run_id, _ = trained
    uri, metric = store[0], keys.ood_key(trial.cfg.ood_sets[0], "gmm", "auroc")
    value = MlflowClient(uri).get_run(run_id).data.metrics[metric]
    fake = [(trial.cfg, 1, value - 0.02), (trial.cfg, 2, value + 0.005)]
    other = trial.cfg.replace(l2=True)
    fake += [(other, 0, value - 0.1), (other, 1, value - 0.05), (other, 2, value + 0.01)]
    for cfg, seed, v in fake:
        tr = tracking.TrialTracker(ref, cfg.replace(seed=seed), trial_id=f"fake_{cfg.condition}_{seed}")
        tr.start()
        tr.log_epoch(cfg.epochs, {metric: v})
        tr.finish()
    return register_best(EXPERIMENT, tracking_uri=uri), metric


def test_register_picks_median_seed_of_best_condition(registered, trained):
    reg, metric = registered
    trial, _, run_id, info = trained
    assert reg.choice.metric == metric == "auroc/gmm/photos"  # the default: first OoD set, GMM AUROC
    best = reg.choice.ranking[0]
    assert best.condition == trial.cfg.condition and len(best.runs) == 3
    assert reg.choice.run.run_id == run_id and reg.model_id == info.model_id
    mv = MlflowClient(reg.tracking_uri).get_model_version_by_alias("ncood-ood-scorer", "champion")
    assert str(mv.version) == reg.version and mv.run_id == run_id and mv.tags["ncood.condition"] == best.condition
    text = format_registration(reg)
    assert f"{trial.cfg.condition}-s0" in text and "median" in text and "3 seed" in text
    assert "mlflow models serve -m models:/ncood-ood-scorer@champion --env-manager local" in text


def test_ncood_register_subcommand_sets_the_alias_on_the_chosen_run(registered, store, capsys):
    """`ncood register` through the real CLI: the same choice as register_best, under the alias asked for."""
    from ncood.cli import main

    reg, _ = registered
    client = MlflowClient(store[0])
    versions = len(client.search_model_versions("name = 'ncood-ood-scorer'"))
    assert main(["register", "--experiment", EXPERIMENT, "--tracking-uri", store[0], "--alias", "cli"]) == 0
    out = capsys.readouterr().out
    assert "models:/ncood-ood-scorer@cli" in out
    mv = client.get_model_version_by_alias("ncood-ood-scorer", "cli")
    assert mv.run_id == reg.choice.run.run_id
    # the same model registered again: the alias points at its version, no copy is added
    assert str(mv.version) == reg.version and f"version {reg.version} already holds this model" in out
    assert len(client.search_model_versions("name = 'ncood-ood-scorer'")) == versions
    assert main(["register", "--experiment", "no-such-experiment", "--tracking-uri", store[0]]) == 2
    assert "no MLflow experiment 'no-such-experiment'" in capsys.readouterr().err


def test_ncood_register_as_its_own_process_imports_no_torch(registered, store):
    """`ncood register` reads runs and sets an alias: it needs neither torch nor the packaging code (~2.5 s of CPU
    per call on 2 cores). `-X importtime` lists every module a process imports."""
    reg, _ = registered
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "ncood", "register", "--experiment", EXPERIMENT,
                          "--tracking-uri", store[0], "--alias", "process"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    mv = MlflowClient(store[0]).get_model_version_by_alias("ncood-ood-scorer", "process")
    assert mv.run_id == reg.choice.run.run_id
    imported = set(re.findall(r"^import time:.*\|\s+(\S+)$", out.stderr, re.M))
    assert "mlflow.tracking" in imported and not {"torch", "ncood.serve.package"} & imported


# ---- the real server -------------------------------------------------------------------------------------------
def _request(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    """`mlflow models serve -m models:/ncood-ood-scorer@champion --env-manager local` on a free loopback port,
    with lowered request limits (NCOOD_SERVING_LIMITS); stopped, with its child, when the module ends."""
    reg, _ = registered
    log = tmp_path_factory.mktemp("server") / "server.log"
    with local_server("models:/ncood-ood-scorer@champion", tracking_uri=reg.tracking_uri, model_config=LIMITS,
                      log_path=log, extra_env={"OMP_NUM_THREADS": "1",
                                               "NCOOD_REQUEST_LIMITS": json.dumps(REQUEST_LIMITS)}) as url:
        yield url


@pytest.fixture(scope="module")
def images(trained):
    """(uint8 pixel arrays, their PNGs in base64): N_EACH ID test digits (8x8 grey), then N_EACH photo patches
    (64x64 RGB crops of scikit-learn's sample photos, the `photos` OoD set before preparation)."""
    trial = trained[0]
    info = trial.data.info
    x = trial.data.test.x[:N_EACH] * info.std[0] + info.mean[0]  # back to pixel space, (N, 1, 8, 8)
    digits = [a for a in x[:, 0].clamp(0, 1).mul(255).round().to(torch.uint8).numpy()]  # (8, 8)
    photos = load_photos(Path("."), "test", download=False, like=trial.data, seed=0).x[:N_EACH]  # (N, 3, 64, 64)
    patches = [a for a in photos.permute(0, 2, 3, 1).numpy()]  # (64, 64, 3) uint8
    arrays = digits + patches
    return arrays, [encode_png(a) for a in arrays]


def _pixels01(a: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) -> (1, C, H, W) float in [0, 1], as the dataset loaders widen uint8."""
    t = torch.from_numpy(a)
    return (t[None] if a.ndim == 2 else t.permute(2, 0, 1))[None].float().div(255)


def _in_process(trial, arrays) -> dict[str, np.ndarray]:
    """The trainer's own model and fitted scores on to_model_input(pixels / 255): no serving code involved."""
    x = torch.cat([to_model_input(_pixels01(a), trial.data.info) for a in arrays])  # (N, 1, 8, 8)
    inputs = feature_pass(trial.trainer.model, x)
    scores = compute_scores(inputs, trial.evaluation.last_fit, scores=served_scores())
    out = {col: scores[name].numpy() for col, name in score_columns(served_scores()).items()}
    out["predicted_class"] = np.array([trial.data.class_names[i] for i in inputs.logits.argmax(1).tolist()])
    return out


def test_server_scores_equal_in_process(server, trained, images):
    trial = trained[0]
    arrays, b64 = images
    status, text = _request(server + "/invocations", {"dataframe_split": {"columns": ["image"],
                                                                          "data": [[s] for s in b64]}})
    assert status == 200, text
    preds = json.loads(text)["predictions"]
    ref = _in_process(trial, arrays)
    for col in score_columns(served_scores()):
        np.testing.assert_allclose([p[col] for p in preds], ref[col], rtol=1e-5, atol=1e-5, err_msg=col)
    assert [p["predicted_class"] for p in preds] == ref["predicted_class"].tolist()
    threshold = mlflow.models.get_model_info(f"models:/{trained[3].model_id}").metadata["ncood"]["gmm_threshold"]
    assert [p["is_ood"] for p in preds] == (ref["gmm_log_density"] < threshold).tolist()
    gmm = ref["gmm_log_density"]
    assert gmm[N_EACH:].mean() < gmm[:N_EACH].mean()  # photo patches score lower than ID digits on average
    # The other request format gives the same answer.
    status, text = _request(server + "/invocations", {"inputs": {"image": b64[:3]}})
    assert status == 200, text
    np.testing.assert_allclose([p["gmm_log_density"] for p in json.loads(text)["predictions"]], gmm[:3],
                               rtol=1e-5, atol=1e-5)


def _bad_payloads(good: str) -> dict[str, tuple[dict, list[str]]]:
    png = base64.b64decode(good)
    noisy = encode_png(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))  # ~77 kB
    huge = encode_png(np.zeros((400, 400), np.uint8))  # 160k pixels, a few hundred bytes
    split = lambda rows, cols=("image",): {"dataframe_split": {"columns": list(cols), "data": rows}}  # noqa: E731
    return {
        "not base64": (split([[good], ["@@ not base64 @@"]]), ["row 1", "not valid base64"]),
        "not an image": (split([[_b64(b"GIF? no, just text")]]), ["row 0", "not an image"]),
        "truncated": (split([[good], [good], [_b64(png[: len(png) // 2])]]), ["row 2", "truncated"]),
        "empty batch": (split([]), ["empty batch"]),
        "empty inputs": ({"inputs": {"image": []}}, ["empty batch"]),
        "missing column": (split([[good]], cols=("img",)), ["missing inputs", "image"]),
        "too many bytes": (split([[good], [noisy]]), ["row 1", "bytes, over the cap of 60000"]),
        "too many pixels": (split([[huge]]), ["row 0", "400x400", "over the cap of 100000 pixels"]),
        "too many images": (split([[good]] * 41), ["too many images", "41", "40"]),
        "null": (split([[None]]), ["row 0", "null"]),
        "null in inputs": ({"inputs": {"image": [good, None]}}, ["row 1", "no image ('None': a JSON null"]),
    }


def test_server_rejects_bad_input_and_keeps_serving(server, images):
    good = images[1][0]
    for name, (body, expected) in _bad_payloads(good).items():
        status, text = _request(server + "/invocations", body)
        assert 400 <= status < 500, f"{name}: HTTP {status} {text[:300]}"
        message = json.loads(text)["message"]
        for fragment in expected:
            assert fragment in message, f"{name}: {fragment!r} not in {message[-400:]!r}"
    assert _request(server + "/ping")[0] == 200
    status, text = _request(server + "/invocations", {"dataframe_split": {"columns": ["image"], "data": [[good]]}})
    assert status == 200 and len(json.loads(text)["predictions"]) == 1


def _request_forms(column: str, cells: list[str]) -> dict[str, dict]:
    """One request in each JSON form MLflow's scoring server accepts."""
    return {"dataframe_split": {"dataframe_split": {"columns": [column], "data": [[c] for c in cells]}},
            "dataframe_records": {"dataframe_records": [{column: c} for c in cells]},
            "inputs": {"inputs": {column: cells}},
            "instances": {"instances": [{column: c} for c in cells]}}


def test_server_errors_are_short_in_every_request_form(server, images):
    """MLflow prefixes a failed predict's message with a repr of the whole input (scoring_server/__init__.py:361),
    in full for the `inputs`/`instances` forms (numpy): a 77 kB image over the cap gave a ~100 kB error. Every form
    now answers ncood's reason alone, the same text, in a small body (ncood.serve.guard.short_error)."""
    good = images[1][0]
    noisy = encode_png(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))  # ~77 kB
    cases = {  # cells -> the whole message
        "too many bytes": ([noisy], f"1 of 1 images rejected: row 0: image is about {len(noisy) * 3 // 4} bytes, "
                                    f"over the cap of {LIMITS['max_image_bytes']} bytes; downscale or recompress it, "
                                    f"or start the server with NCOOD_SERVING_LIMITS='{{\"max_image_bytes\": "
                                    f"{len(noisy) * 3 // 4}}}' (deploy/serving/README.md)"),
        "too many images": ([good] * 41, "too many images: 41 in one request, the cap is 40; split the batch"),
    }
    for name, (cells, expected) in cases.items():
        for form, body in _request_forms("image", cells).items():
            status, text = _request(server + "/invocations", body)
            assert status == 400, f"{name}, {form}: HTTP {status} {text[:300]}"
            assert json.loads(text)["message"] == expected, f"{name}, {form}: {text[:300]} ... {text[-300:]}"
            assert len(text) < 500, f"{name}, {form}: a {len(text)}-byte answer"
    for form, body in _request_forms("img", [noisy]).items():  # MLflow's schema check, its data echo cut
        status, text = _request(server + "/invocations", body)
        message = json.loads(text)["message"]
        assert status == 400 and message.startswith("Failed to enforce schema of the request with schema"), text[:300]
        assert "missing inputs ['image']" in message and len(text) < 500, f"{form}: {len(text)} bytes"
    status, text = _request(server + "/invocations", {"inputs": {"image": [good]}})  # successes pass unchanged
    assert status == 200 and len(json.loads(text)["predictions"]) == 1


def _raw_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST exactly these headers (urllib would add a form Content-Type of its own)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", parts.path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_server_answers_4xx_before_mlflow_parses(server, images):
    """Bodies MLflow's own parser answers with 500 (json.loads RecursionError; a missing Content-Type) and an
    over-large body get 4xx from ncood.serve.guard, and the server keeps serving."""
    good = images[1][0]
    json_type = {"Content-Type": "application/json"}
    cases = {
        "nested lists": (b"[" * 5000 + b"]" * 5000, json_type, 400, "5000 levels deep"),
        "nested objects": (b'{"a":' * 5000 + b"1" + b"}" * 5000, json_type, 400, "5000 levels deep"),
        "nested inside inputs": (b'{"inputs": {"image": ' + b"[" * 3000 + b"]" * 3000 + b"}}", json_type, 400,
                                 "3002 levels deep"),
        "no content type": (json.dumps({"inputs": {"image": [good]}}).encode(), {}, 415, "Content-Type"),
        "over the byte cap": (json.dumps({"inputs": {"image": [good] * 1}}).encode() + b" " * 2_100_000,
                              json_type, 413, "over the cap of 2000000 bytes"),
    }
    for name, (body, headers, expected, fragment) in cases.items():
        status, text = _raw_request(server + "/invocations", body, headers)
        assert status == expected, f"{name}: HTTP {status} {text[:300]}"
        assert fragment in json.loads(text)["message"], f"{name}: {text[:300]}"
    # brackets inside strings are not nesting: a good request whose base64 cell MLflow then refuses (400, not 500)
    status, text = _raw_request(server + "/invocations", json.dumps({"inputs": {"image": ["[" * 5000]}}).encode(),
                                json_type)
    assert status == 400 and "row 0" in json.loads(text)["message"], text[:300]
    assert _request(server + "/ping")[0] == 200
    status, text = _request(server + "/invocations", {"dataframe_split": {"columns": ["image"], "data": [[good]]}})
    assert status == 200 and len(json.loads(text)["predictions"]) == 1


def test_ncood_serve_without_an_activated_venv(registered, images, tmp_path):
    """`<venv>/bin/ncood serve` (here: this interpreter -m ncood) with a PATH that lacks the venv's bin, as a user who
    never activated it: it starts the champion, answers /ping and one request, and stops with its process group."""
    reg, _ = registered
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve()) or "/usr/bin:/bin"
    env["OMP_NUM_THREADS"] = "1"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ncood", "serve", "--tracking-uri", reg.tracking_uri,
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not ping(url):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        status, text = _request(url + "/invocations", {"inputs": {"image": images[1][:2]}})
        assert status == 200, text
        assert len(json.loads(text)["predictions"]) == 2
        assert "ncood serve: models:/ncood-ood-scorer@champion" in log.read_text()
    finally:
        stop_group(proc, grace_s=30)
