"""Package a finished trial as the MLflow pyfunc model `ood_scorer` and log it into the trial's own run.

The model directory holds (artifacts of the pyfunc `ncood.serve.pyfunc.OODScorerModel`):

    scorer.json    create_model arguments, preprocessing (dataset, C x H x W, mean/std), class names, the served
                   scores and their params, the decision threshold, request limits, the trial's config (ScorerSpec)
    weights.pt     the network's state_dict only (no optimizer state), CPU, loadable with weights_only=True
    gaussians.pt   the fitted DDU class Gaussians (ClassGaussians.save; float64: C x d x d Cholesky factors)
    scores.pt      the fitted states of the other served scores ({fit key: {name: tensor}}, ncood.ood.pack_states;
                   float64, e.g. ViM's D x (D - dim) residual basis, Mahalanobis' D x D whitening; KNN is not served:
                   its state is the whole train-feature bank)
    code/ncood     this ncood source (MLflow `code_paths`): the model serves with the code it was trained with,
                   also in an image built by `mlflow models build-docker` where ncood is not installed

plus a signature (one string column `image` -> the response columns), an input example (a base64 PNG of an ID
validation image) and pinned pip requirements (mlflow, torch, torchvision, numpy, pillow, pytorch-ood: ncood's
imports).

Decision threshold: t = the score that accepts 95% of the ID *validation* images under the GMM score, with the
definition of ncood.ood.metrics.fpr_at_tpr (the k-th largest score, k = ceil(0.95 n); `threshold_at_tpr`),
computed with the same fp32 forward the server uses (no autocast, no TF32), on the trial's device.

MLflow 3 notes: `mlflow.pyfunc.log_model` logs into the *active fluent* run only; a trial owns its run through
an MlflowClient (ncood.tracking), so this module creates the LoggedModel in that run's experiment with
`MlflowClient.create_logged_model(source_run_id=...)`, writes it with `mlflow.models.Model.log(model_id=...)` and
links it to the run (`link_to_run`: run output + the run's metrics as model metrics). Model.log resolves its client
from the process-wide tracking URI, which is set for the duration of the call only (sys.path restored too).

Per-trial cost (a trial logs one model): the requirements are given (no inference, which would load the model in
a subprocess) and the metric link is two calls instead of MLflow's one query per metric key. MLflow still
validates the serving input example (it loads the saved model in process and predicts one image: pyfunc
save_model takes no switch for it in MLflow 3.17) and checks the given requirements against the installed
packages, mapping every installed distribution once per process (a reused Ray worker pays that at its first trial).
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from torch import nn

import ncood
from ncood import keys
from ncood.config import TrialConfig
from ncood.data import IDData
from ncood.evaluate import exact_fp32
from ncood.keys import SCORER_NAME
from ncood.ood import SCORES, ScoreFit, pack_states, served_scores
from ncood.ood.metrics import threshold_at_tpr
from ncood.pipeline import model_kwargs
from ncood.run_fields import process_tracking_uri
from ncood.serve.decoding import INPUT_COLUMN, ServingLimits, encode_png
from ncood.serve.scorer import Scorer, ScorerSpec, output_columns, score_columns, score_model_input

THRESHOLD_TPR_PERCENT = 95  # is_ood threshold: accepts this % of ID validation images
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pillow", "pytorch-ood")  # what ncood.serve imports
PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_model.py")  # models-from-code file (set_model(OODScorerModel()))
FILES = {"spec": "scorer.json", "weights": "weights.pt", "gaussians": "gaussians.pt", "scores": "scores.pt"}


@dataclass
class ScorerParts:
    """What the scorer is built from: the trained network, the ID data (info, class names, val images), the
    fitted scores (feature space + class Gaussians) and the trial's config."""

    model: nn.Module
    data: IDData
    fit: ScoreFit
    cfg: TrialConfig

    @classmethod
    def from_trial(cls, trial: Any) -> ScorerParts:
        """From a finished ncood.pipeline.Trial (its last evaluation holds the fitted Gaussians)."""
        fit = trial.evaluation.last_fit
        if fit is None:
            raise ValueError("the trial has no fitted scores yet: log the scorer after its last evaluation")
        return cls(trial.trainer.model, trial.data, fit, trial.cfg)


def decision_threshold(parts: ScorerParts, tpr_percent: int = THRESHOLD_TPR_PERCENT) -> tuple[float, int]:
    """(t, n_val): the GMM score accepting tpr_percent % of the ID validation images, fp32 on the trial's device."""
    val_x = parts.data.val.x
    if val_x.shape[0] == 0:
        raise ValueError("the trial has no validation images: the decision threshold is set on them")
    device = next(parts.model.parameters()).device
    with exact_fp32(device):
        gmm = score_model_input(parts.model, parts.fit, val_x, scores=("gmm",))["gmm_log_density"]
    return threshold_at_tpr(gmm.cpu().numpy(), tpr_percent), int(val_x.shape[0])


def package_scores(fit: ScoreFit) -> tuple[str, ...]:
    """The scores a package serves: the served registry scores (ncood.ood.served_scores) this fit has, in registry
    order; gmm must be among them (the decision threshold is on it)."""
    names = tuple(n for n in served_scores() if n in fit.scores)
    if "gmm" not in names:
        raise ValueError("the trial's evaluation did not fit the gmm score: the scorer's decision is set on it")
    return names


def write_scorer(parts: ScorerParts, out_dir: str | Path, limits: ServingLimits | None = None,
                 tpr_percent: int = THRESHOLD_TPR_PERCENT) -> dict[str, str]:
    """Write scorer.json, weights.pt, gaussians.pt and scores.pt into out_dir; returns {artifact key: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info, cfg = parts.data.info, parts.cfg
    threshold, n_val = decision_threshold(parts, tpr_percent)
    spec = ScorerSpec(
        arch=cfg.arch, model_kwargs=model_kwargs(cfg, info), dataset=info.name, image_shape=tuple(info.image_shape),
        mean=tuple(info.mean), std=tuple(info.std), class_names=tuple(parts.data.class_names),
        feature_space="input", threshold=threshold, threshold_tpr=tpr_percent / 100,
        threshold_n_val=n_val, limits=limits or ServingLimits(),
        trial={"condition": cfg.condition, "seed": cfg.seed, "config": cfg.to_dict()},
        scores=package_scores(parts.fit),
        score_params={n: dataclasses.asdict(p) for n, p in parts.fit.params.items() if n in _owners(parts.fit)},
    )
    paths = {key: str(out / name) for key, name in FILES.items()}
    spec.save(paths["spec"])
    weights = {k: v.detach().to("cpu").contiguous() for k, v in parts.model.state_dict().items()}  # no optimizer
    torch.save(weights, paths["weights"])
    parts.fit.gaussians.save(paths["gaussians"])
    torch.save(pack_states(parts.fit, spec.scores, exclude=("gmm",)), paths["scores"])
    return paths


def _owners(fit: ScoreFit) -> set[str]:
    """The scores whose params a package keeps: the served ones and the scores whose fit they share."""
    return {SCORES[n].shares or n for n in package_scores(fit)}


def example_image(parts: ScorerParts) -> str:
    """Base64 PNG of the first ID validation image, back in pixel space (the signature's input example)."""
    info = parts.data.info
    x = parts.data.val.x[0].detach().float().cpu()  # (C, H, W) normalized
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    pixels = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)  # (C, H, W)
    return encode_png(pixels[0] if pixels.shape[0] == 1 else pixels.permute(1, 2, 0))


def signature(scores: tuple[str, ...]) -> ModelSignature:
    """image (base64 string) -> one double column per served score, predicted_class, is_ood."""
    outputs = [ColSpec("double", c) for c in score_columns(scores)]
    return ModelSignature(inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
                          outputs=Schema([*outputs, ColSpec("string", "predicted_class"), ColSpec("boolean", "is_ood")]))


def pip_requirements() -> list[str]:
    """Pinned public versions of what the server imports (local labels such as '+cu132' dropped)."""
    reqs = []
    for name in REQUIREMENTS:
        try:
            reqs.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def log_ood_scorer(trial: Any, run_id: str, tracking_uri: str, *, name: str = SCORER_NAME,
                   limits: ServingLimits | None = None, tpr_percent: int = THRESHOLD_TPR_PERCENT) -> ModelInfo:
    """Log the `ood_scorer` pyfunc model of a finished trial into its run `run_id` (any status but deleted).

    trial: an ncood.pipeline.Trial after its last epoch, or ScorerParts, or a (model, IDData, ScoreFit,
    TrialConfig) tuple. The run may be RUNNING or already FINISHED. Returns MLflow's ModelInfo
    (model_uri 'models:/<model_id>'). Takes about a second plus the threshold's forward pass over the val set.
    """
    if isinstance(trial, tuple):
        trial = ScorerParts(*trial)  # (model, data, fit, cfg)
    parts = trial if isinstance(trial, ScorerParts) else ScorerParts.from_trial(trial)
    cfg = parts.cfg
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory(prefix="ncood-scorer-") as d:
        files = write_scorer(parts, d, limits, tpr_percent)
        spec = ScorerSpec.load(files["spec"])
        example = example_image(parts)
        check = Scorer.from_files(files["spec"], files["weights"], files["gaussians"], files["scores"])
        check.score_base64([example])  # fail here, loudly, rather than in the server
        summary = {"condition": cfg.condition, "seed": cfg.seed, "dataset": spec.dataset,
                   "image_shape": list(spec.image_shape), "class_names": list(spec.class_names),
                   "feature_space": spec.feature_space, "scores": list(spec.scores),
                   "response_columns": list(output_columns(spec.scores)), "gmm_threshold": spec.threshold,
                   "threshold_tpr": spec.threshold_tpr, "threshold_n_val": spec.threshold_n_val}
        logged = client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=run_id, model_type="ncood-ood-scorer",
            params={k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # as the run's params
                    for k, v in {**cfg.to_dict(), "gmm_threshold": spec.threshold}.items()},
            tags={keys.TAG_CONDITION: cfg.condition, keys.TAG_SEED: str(cfg.seed), MLFLOW_RUN_NOTE: (  # the UI's description
                f"ncood OoD scorer of trial {cfg.condition} seed {cfg.seed} ({spec.dataset}): base64 PNG images in, "
                f"class probabilities and the OoD scores {', '.join(spec.scores)} out; GMM decision threshold at "
                f"{spec.threshold_tpr:.0%} ID acceptance on {spec.threshold_n_val} val images.")})
        saved_path = list(sys.path)
        try:
            with process_tracking_uri(tracking_uri):
                info = Model.log(  # run_id=None: the run link and its metrics follow below, in two calls
                    None, name=name, flavor=mlflow.pyfunc, model_id=logged.model_id,
                    python_model=str(PYFUNC_ENTRY), artifacts=files,
                    signature=signature(spec.scores), input_example=pd.DataFrame({INPUT_COLUMN: [example]}),
                    pip_requirements=pip_requirements(), code_paths=[str(Path(ncood.__file__).parent)],
                    metadata={"ncood": summary}, await_registration_for=0,
                )
        finally:
            sys.path[:] = saved_path
    link_to_run(client, run_id, logged.model_id, cfg.epochs)
    return info


def link_to_run(client: MlflowClient, run_id: str, model_id: str, step: int) -> None:
    """The model as an output of its run at `step`, with the run's metrics at `step` as the model's metrics.

    What Model.log(run_id=...) does itself, in two calls: MLflow's version reads the whole history of every metric
    key (one query per key: ~200 keys per trial with the post-hoc scores, seconds on a sqlite store) to pick the
    values at `step`; a finished trial's latest values are its last epoch's. The run's latest Metric objects
    (RunData._metric_objs: MLflow 3.17 exposes their timestamps nowhere else) are logged again with model_id and
    their own timestamps, so the run's history keeps one entry per step (the store skips exact duplicates) and the
    model gets its metrics."""
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)])
    latest = [m for m in client.get_run(run_id).data._metric_objs if m.step == step]
    client.log_batch(run_id, metrics=[Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id)
                                      for m in latest])
