"""NC control and the NC intervention: the ETF projector is fixed and a simplex ETF, the entropy regularizer and the
loss switch leave default training bit-identical, the NC loss drives NC down faster than cross-entropy, and (slow) the
ablation -> nc_intervention -> aggregation chain on digits with a local Ray and a tmp MLflow store."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from ncood import keys, train
from ncood.config import ConfigError, make_config
from ncood.intervention import GROUPS, InterventionSettings, continuation_config
from ncood.models import simplex_etf
from ncood.pipeline import build_trial


from job_scripts import load_job


def _cfg(tmp_path, **kw):
    base = dict(width=4, epochs=2, eval_every=0, device="cpu", data_root=str(tmp_path / "data"), seed=3)
    return make_config("digits", **{**base, **kw})


def test_etf_projector_weights_are_the_icml_code():
    """Pinned small case of NC-OOD resnet/resnet_etf.py:157-163: weight = sqrt(c/(c-1)) (eye(*shape) - ones(*shape)/c)
    with c = the projector's output dim (= d) in BOTH layers, shapes (4d, d) and (d, 4d), no rotation."""
    from ncood.models import ETFProjector

    proj = ETFProjector(3)  # d = 3, hidden 12, c = 3: sqrt(3/2) * (2/3 on the rectangular diagonal, -1/3 elsewhere)
    a = (3 / 2) ** 0.5
    diag, off = a * 2 / 3, -a / 3
    w1 = torch.full((12, 3), off, dtype=torch.float64)
    w1[0, 0] = w1[1, 1] = w1[2, 2] = diag
    w2 = torch.full((3, 12), off, dtype=torch.float64)
    w2[0, 0] = w2[1, 1] = w2[2, 2] = diag
    assert proj.w1.dtype == torch.float32 and proj.w1.shape == (12, 3) and proj.w2.shape == (3, 12)
    torch.testing.assert_close(proj.w1.double(), w1, rtol=0, atol=1e-7)
    torch.testing.assert_close(proj.w2.double(), w2, rtol=0, atol=1e-7)
    np = pytest.importorskip("numpy")  # the code's formula, written with numpy for d = 5 (hidden 20)
    for shape in ((20, 5), (5, 20)):
        ref = (5 / 4) ** 0.5 * (np.eye(*shape) - np.ones(shape) / 5)
        np.testing.assert_allclose(simplex_etf(shape[1], shape[0], c=5).numpy(), ref, rtol=1e-6, atol=1e-7)
    w = simplex_etf(4, 4, c=4).double()  # square: the rows are a simplex ETF
    torch.testing.assert_close(w @ w.T, 4 / 3 * (torch.eye(4, dtype=torch.float64) - 0.25), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="c >= 2"):
        simplex_etf(4, 4, c=1)


def test_etf_projector_is_fixed_during_training(tmp_path):
    cfg = _cfg(tmp_path, etf_projector=True)
    assert cfg.condition == "resnet18-w4-nol2-sn-lg-etf-e2"
    trial = build_trial(cfg, progress=False)
    model = trial.trainer.model
    proj = model.projector
    assert proj is not None and not list(proj.parameters())  # buffers: no optimizer can see them
    before = {k: v.clone() for k, v in proj.state_dict().items()}
    d = model.feature_dim
    assert torch.equal(proj.w1, simplex_etf(d, 4 * d, c=d)) and torch.equal(proj.w2, simplex_etf(4 * d, d, c=d))
    cls_before = model.classifier.weight.detach().clone()
    trial.trainer.fit()
    for k, v in proj.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.classifier.weight, cls_before)  # the rest trains
    x = trial.data.train.x[:5]
    model.eval()
    logits, z = model(x)
    assert torch.allclose(model.classifier_input(z).norm(dim=1), torch.ones(5), atol=1e-5)
    assert not torch.allclose(z.norm(dim=1), torch.ones(5))  # forward returns pre-normalization features


def test_defaults_reproduce_plain_cross_entropy_exactly(tmp_path, monkeypatch):
    """entropy_reg=0, loss='ce' (the defaults) give bit-identical weights to a loop that calls F.cross_entropy."""
    cfg = _cfg(tmp_path, entropy_reg=0.0, loss="ce")
    assert cfg.condition == "resnet18-w4-nol2-sn-lg-e2"  # condition names of the papers' grids are unchanged
    ours = build_trial(cfg, progress=False)
    ours.trainer.fit()
    monkeypatch.setattr(train, "training_loss", lambda model, logits, z, y, c: F.cross_entropy(logits.float(), y))
    plain = build_trial(cfg, progress=False)
    plain.trainer.fit()
    a, b = ours.trainer.model.state_dict(), plain.trainer.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.undo()
    reg = build_trial(cfg.replace(entropy_reg=0.05), progress=False)
    reg.trainer.fit()
    assert not torch.equal(reg.trainer.model.classifier.weight, ours.trainer.model.classifier.weight)


def test_nn_entropy_matches_direct_computation():
    z = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    u = z / z.norm(dim=1, keepdim=True)
    d = torch.cdist(u, u) + torch.diag(torch.full((20,), float("inf")))
    assert torch.allclose(train.nn_entropy(z), -torch.log(d.min(1).values + 1e-8).mean(), atol=1e-6)


def test_config_validation_and_condition():
    with pytest.raises(ConfigError, match="loss"):
        make_config("digits", loss="mse")
    with pytest.raises(ConfigError, match="entropy_reg"):
        make_config("digits", entropy_reg=-1.0)
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="label_smoothing"):
            make_config("digits", label_smoothing=bad)
    cfg = make_config("digits", lr_steps="10", entropy_reg=0.05, loss="nc")
    assert cfg.milestones == (10,) and cfg.condition.endswith("-ent0.05-ncloss-e15")
    assert make_config("digits").milestones == make_config("digits", lr_steps=None).milestones


def test_mlflow_params_rebuild_the_trial_config(tmp_path):
    """find_sources rebuilds each source run's config from its MLflow params (strings) with config_from_params:
    every field type, the optional floats lr / weight_decay, lists (ood_sets, lr_steps, betas) included, comes back
    equal; other params (a score's score/<name>/<field>) are ignored."""
    from ncood.aggregate.runs import RUN_FIELDS, _param as aggregate_param
    from ncood.config import config_from_params
    from ncood.tracking import _param_value

    cfg = make_config("digits", optimizer="adamw", lr=5.5e-4, weight_decay=0.06, betas="0.8,0.9", lr_steps="3,5",
                      loss="logitnorm", logitnorm_temperature=0.1, batch_size=64, schedule="cosine",
                      bn_groups=4, precision="bf16", data_root=str(tmp_path))
    params = {k: _param_value(v) for k, v in cfg.to_dict().items()}  # as ncood.tracking logs them
    assert config_from_params({**params, keys.score_param_key("knn", "k"): "50"}) == cfg
    assert {f: aggregate_param(params, f) for f in RUN_FIELDS} == {f: getattr(cfg, f) for f in RUN_FIELDS}


def test_continuation_groups_differ_only_in_loss(tmp_path):
    src = _cfg(tmp_path, epochs=15)
    st = InterventionSettings(from_epoch=10)
    ctrl, inter = (continuation_config(src, g, st) for g in ("control", "intervention"))
    assert (ctrl.loss, inter.loss) == (GROUPS["control"], GROUPS["intervention"]) == ("ce", "nc")
    assert ctrl.replace(loss="nc") == inter
    assert (ctrl.lr, ctrl.milestones, ctrl.batch_size, ctrl.epochs) == (1e-2, (10,), 2048, 20)


def test_nc_loss_training_collapses_faster_than_cross_entropy(tmp_path):
    """From the same weights, a few NC-loss epochs lower NC1 more than cross-entropy epochs do."""
    base = build_trial(_cfg(tmp_path, width=8, epochs=8), progress=False)  # past the early, chaotic phase
    base.trainer.fit()
    state = base.trainer.model.state_dict()
    nc1 = {}
    for loss in ("ce", "nc"):
        t = build_trial(_cfg(tmp_path, width=8, epochs=5, lr=1e-2, batch_size=2048, eval_every=5, loss=loss),
                        progress=False)
        t.trainer.model.load_state_dict(state)
        t.trainer.fit()
        nc1[loss] = t.trainer.history[-1][keys.nc_key("nc1")]
    assert nc1["nc"] < nc1["ce"], nc1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ablation_then_intervention_end_to_end(local_ray, tmp_store, tmp_path):
    """Tiny ablation (2 seeds, 3 epochs, checkpoint at 2) -> intervention (3 epochs) -> tables, figures, MLflow runs."""
    from mlflow.tracking import MlflowClient

    from ncood.tune import SweepSettings, run_grid

    uri = tmp_store
    settings = SweepSettings(experiment="abl", tracking_uri=uri, storage_path=str(tmp_path / "ray"),
                             progress=False, keep_checkpoint_epochs=(2,),
                             max_concurrent=1)  # one reused worker: tests/test_ablation.py::_settings says why
    result = run_grid("default", {"epochs": [3], "width": 4, "eval_every": 1}, seeds=2, settings=settings)
    assert result.num_errors == 0
    job = load_job("nc_intervention")
    rc = job.main(["--experiment", "abl", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"),
                   "--from-epoch", "3", "--intervention-epochs", "3", "--lr-step", "2", "--quiet",
                   "--max-concurrent", "1", "--aggregate-out", str(tmp_path / "aggregate")])
    assert rc == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("abl-nc-intervention")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "trial"]
    assert sorted(r.data.tags["group"] for r in children) == ["control"] * 2 + ["intervention"] * 2
    assert all(r.data.tags["onset_epoch"] == "2" and r.data.tags["requested_epoch"] == "3" for r in children)
    assert all(r.data.params["loss"] == GROUPS[r.data.tags["group"]] for r in children)
    hist = client.get_metric_history(children[0].info.run_id, keys.nc_key("nc1"))
    assert sorted(m.step for m in hist) == [2, 3, 4, 5]  # onset + every continuation epoch
    agg = [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "aggregate"]
    assert len(agg) == 1
    files = {f.path for f in client.list_artifacts(agg[0].info.run_id, "figures")}
    assert {"figures/fig3_nc_curves.png", "figures/fig4_auroc_change.png"} <= files
    assert (tmp_path / "aggregate" / "tables" / "nc_summary.csv").exists()
    # --resume through the job's CLI: the finished sweep is reattached (its saved trainable, the continuation one),
    # nothing is trained again and no run is added
    rc = job.main(["--resume", "--experiment", "abl", "--intervention-experiment", "abl-nc-intervention",
                   "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"), "--quiet", "--no-aggregate"])
    assert rc == 0
    again = [r for r in client.search_runs([exp.experiment_id], max_results=100)
             if r.data.tags.get(keys.TAG_ROLE) == "trial"]
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in again)
    hist = client.get_metric_history(children[0].info.run_id, keys.nc_key("nc1"))
    assert sorted(m.step for m in hist) == [2, 3, 4, 5]  # nothing logged again


def test_nc_control_grid_axes_and_flags():
    from ncood.config import TrialConfig
    from ncood.tune import grid_conditions, jobs
    from ncood.tune.grid import GRIDS

    job = load_job("ablation")
    args = job.build_parser().parse_args(["--etf-projector", "off", "on", "--entropy-reg", "0,0.05"])
    overrides = jobs.overrides_from_args(args)
    assert overrides == {"etf_projector": [False, True], "entropy_reg": [0.0, 0.05]}
    shared, conds = grid_conditions("default", overrides)
    assert len(conds) == 8
    names = {TrialConfig.from_dict({**shared, **c, "seed": 0}).condition for c in conds}
    assert len(names) == 8 and "resnet18-w8-nol2-sn-lg-e15" in names and "resnet18-w8-l2-sn-lg-etf-ent0.05-e15" in names
    assert jobs.settings_from_args(args, "ablation").keep_checkpoint_epochs == GRIDS["default"].keep_checkpoint_epochs
    assert jobs.settings_from_args(job.build_parser().parse_args(["--keep-checkpoint-epochs", "3,7"]),
                                   "ablation").keep_checkpoint_epochs == (3, 7)
