"""The score registry sweep (ncood/ood/scores.py): every score finite float64, reading exactly its declared feature
space, separating far OoD; params, shared fits, packed states, a new score in one decorated function. The class
Gaussians are tests/test_gaussian.py, the detection metrics tests/test_ood_metrics.py."""
import dataclasses

import pytest
import torch

from blobs import blobs
from ncood import keys
from ncood.ood import (SCORES, SPACES, Head, ScoreInputs, compute_scores, detection_metrics, fit_diagnostics, fit_scores,
                       pack_states, register_score, score_params, served_scores, unpack_states)


# ---- the score registry -------------------------------------------------------------------------------------

def inputs_of(x, head, l2):
    """ScoreInputs of raw features x (N, d): the classifier input is x / ||x|| for an L2 model."""
    x_in = torch.nn.functional.normalize(x, dim=1) if l2 else None
    return ScoreInputs(x, head(x if x_in is None else x_in).float(), x_in)


@pytest.fixture(scope="module")
def id_ood():
    """ID: 4 Gaussian blobs at 5 e_c in d=8; OoD: small-norm noise near the origin, far from every blob."""
    x, y = blobs(100, 8, 4)
    g = torch.Generator().manual_seed(9)
    head = Head(torch.randn(4, 8, generator=g), 0.1 * torch.randn(4, generator=g))
    test_x, _ = blobs(50, 8, 4, seed=1)
    ood_x = 0.3 * torch.randn(200, 8, generator=g)
    return x, y, head, test_x, ood_x


def fit_all(x, y, head, l2, scores=None, **kw):
    return fit_scores(inputs_of(x, head, l2), y, num_classes=4, head=head, scores=scores, **kw)


@pytest.mark.parametrize("name", list(SCORES))
@pytest.mark.parametrize("l2", [False, True])
def test_every_score_is_finite_float64(name, l2, id_ood):
    x, y, head, test_x, ood_x = id_ood
    fit = fit_all(x, y, head, l2, scores=[name])
    for z in (test_x, ood_x):
        s = compute_scores(inputs_of(z, head, l2), fit)[name]
        assert s.shape == (z.shape[0],) and s.dtype == torch.float64
        assert torch.isfinite(s).all()


@pytest.mark.parametrize("name", list(SCORES))
def test_every_score_reads_exactly_its_declared_spaces(name, id_ood):
    """Replace one space of the inputs at a time (raw z, classifier input, logits): the score changes exactly when
    the replaced space is one it declares. The fit is on consistent train inputs; the probes are not."""
    x, y, head, test_x, _ = id_ood
    fit = fit_all(x, y, head, True, scores=[name])
    base = inputs_of(test_x, head, True)
    g = torch.Generator().manual_seed(3)
    other = {"raw": 2 * torch.randn(base.features.shape, generator=g) + 1,
             "input": torch.nn.functional.normalize(torch.randn(base.features.shape, generator=g) + 0.5, dim=1),
             "logits": 3 * torch.randn(base.logits.shape, generator=g)}
    fields = {"raw": "features", "input": "classifier_input", "logits": "logits"}
    s0 = compute_scores(base, fit)[name]
    reads = SCORES[name].reads
    assert set(reads) <= set(SPACES) and SCORES[name].space in reads
    for space in SPACES:
        probe = ScoreInputs(**{**{f: getattr(base, f) for f in fields.values()}, fields[space]: other[space]})
        changed = not torch.equal(compute_scores(probe, fit)[name], s0)
        assert changed == (space in reads), (name, space, reads)


def test_input_space_is_raw_z_without_a_classifier_input(id_ood):
    x, y, head, test_x, _ = id_ood
    raw = ScoreInputs(test_x, head(test_x).float())
    assert raw.space("input") is raw.space("raw")
    with pytest.raises(ValueError, match="feature space must be one of"):
        raw.space("l1")
    with pytest.raises(ValueError, match="reads the logits"):
        ScoreInputs(test_x).space("logits")


@pytest.mark.parametrize("name", ["gmm", "feature_norm", "mahalanobis", "knn"])
def test_scores_separate_far_ood(name, id_ood):
    x, y, head, test_x, ood_x = id_ood
    fit = fit_all(x, y, head, False, scores=[name])
    m = detection_metrics(compute_scores(inputs_of(test_x, head, False), fit)[name],
                          compute_scores(inputs_of(ood_x, head, False), fit)[name])
    assert m["auroc"] > 0.9 and m["fpr95"] < 0.2


def test_raw_logit_scores_are_tmlr_table3s_normalization_off_measurements(id_ood):
    """TMLR 2024 App. A.2 measures logits with the normalization turned off at test time: W z + b on the raw z. For an
    L2 model they carry ||z|| (max_logit's W z/||z|| + b does not); without L2 they are max_logit and logit_norm."""
    x, y, head, test_x, ood_x = id_ood
    names = ["raw_max_logit", "raw_logit_norm", "max_logit", "logit_norm"]
    ref = head(test_x)  # (N, C) float64 W z + b
    for l2 in (True, False):
        got = compute_scores(inputs_of(test_x, head, l2), fit_all(x, y, head, l2, scores=names))
        torch.testing.assert_close(got["raw_max_logit"], ref.amax(dim=1), rtol=0, atol=0)
        torch.testing.assert_close(got["raw_logit_norm"], ref.norm(dim=1), rtol=0, atol=0)
        same = torch.allclose(got["raw_max_logit"], got["max_logit"], atol=1e-5)
        assert same == (not l2)  # an L2 model's logits see z/||z||, not z
        assert torch.allclose(got["raw_logit_norm"], got["logit_norm"], atol=1e-5) == (not l2)
    assert not any(SCORES[n].served for n in names[:2])  # analysis measurements: the endpoint is unchanged
    with pytest.raises(ValueError, match="the classifier takes 8"):
        compute_scores(ScoreInputs(test_x[:, :5], head(test_x).float(), test_x), fit_all(x, y, head, True, scores=names))


def test_gmm_of_an_l2_model_lives_on_the_normalized_features(id_ood):
    x, y, head, *_ = id_ood
    fit = fit_all(x, y, head, True, scores=["gmm"])
    assert fit.gaussians.means.norm(dim=1).max() <= 1.0 + 1e-6
    raw = fit_all(x, y, head, False, scores=["gmm"])
    assert raw.gaussians.means.norm(dim=1).min() > 3.0
    assert fit_diagnostics(raw) == {keys.GMM_JITTER: raw.gaussians.jitter, keys.GMM_DEGENERATE_DIMS: 0.0}


def test_shared_fit_runs_once_and_params_are_resolved(id_ood, monkeypatch):
    x, y, head, *_ = id_ood
    calls = []
    hook = SCORES["neco"].fit
    monkeypatch.setitem(SCORES, "neco", dataclasses.replace(SCORES["neco"],
                                                            fit=lambda data, p: calls.append(p) or hook(data, p)))
    fit = fit_all(x, y, head, False, scores=["neco", "neco_maxlogit"], params={"neco": {"dim": 2}})
    assert len(calls) == 1 and calls[0].dim == 2 and list(fit.state) == ["neco"]
    fit = fit_all(x, y, head, False, scores=["neco_maxlogit"])  # the sharing score alone still fits its owner
    assert list(fit.state) == ["neco"] and fit.fitted("neco_maxlogit").params.dim is None


def test_score_params_are_flat_mlflow_params_and_bad_overrides_fail():
    flat = score_params()
    assert flat[keys.score_param_key("knn", "k")] == 50
    assert flat[keys.score_param_key("react", "percentile")] == 0.9
    assert flat[keys.score_param_key("neco_maxlogit", "space")] == "input+logits"
    assert {keys.score_param_key(n, "space") for n in SCORES} <= set(flat)
    assert score_params(["knn"], {"knn": {"k": 7}}) == {"score/knn/space": "input", "score/knn/k": 7}
    with pytest.raises(KeyError, match="has no params \\['kk'\\]"):
        score_params(["knn"], {"knn": {"kk": 7}})
    with pytest.raises(KeyError, match="no hyperparameters"):
        score_params(None, {"msp": {"t": 1}})
    with pytest.raises(ValueError, match="use 0.9 instead of 90"):
        score_params(None, {"react": {"percentile": 90}})


def test_packed_states_round_trip(id_ood):
    x, y, head, test_x, _ = id_ood
    fit = fit_all(x, y, head, True)
    packed = pack_states(fit, served_scores())
    assert "knn" not in packed and "knn" not in served_scores() and {"gmm", "vim", "neco"} <= set(packed)
    assert all(t.device.type == "cpu" for st in packed.values() for t in st.values())
    restored = type(fit)(served_scores(), unpack_states(packed), fit.params, head)
    probe = inputs_of(test_x, head, True)
    want, got = compute_scores(probe, fit, served_scores()), compute_scores(probe, restored)
    assert all(torch.equal(want[n], got[n]) for n in served_scores())


def test_new_score_with_own_fit_state_is_one_decorated_function(id_ood):
    x, y, head, test_x, _ = id_ood
    try:
        @register_score("_test_centroid", space="raw", fit=lambda data, params: data.train.features.mean(0))
        def centroid(inputs, fitted):
            return -(inputs.space("raw") - fitted.state).norm(dim=1)

        @register_score("_test_nan", space="logits")
        def nan_score(inputs, fitted):
            return torch.full((len(inputs),), float("nan"))

        fit = fit_all(x, y, head, False)
        assert set(fit.state) == {n for n, sc in SCORES.items() if sc.fit is not None}
        assert {"gmm", "_test_centroid"} <= set(fit.state)
        with pytest.raises(ValueError, match="'_test_nan': 200 of 200 values are non-finite"):
            compute_scores(inputs_of(test_x, head, False), fit)
        assert compute_scores(inputs_of(test_x, head, False), fit, ["_test_centroid"])["_test_centroid"].shape == (200,)
        with pytest.raises(ValueError, match="already registered"):
            register_score("gmm", space="raw")(centroid)
        for bad, match in ((dict(space="l2"), "space must be one of"), (dict(space="raw", shares="msp"), "shares"),
                           (dict(space="raw", params=3), "dataclass")):
            with pytest.raises((ValueError, TypeError), match=match):
                register_score("_test_bad", **bad)(centroid)
        with pytest.raises(ValueError, match="must not contain"):
            register_score("ood", space="raw")(centroid)
    finally:
        for n in ("_test_centroid", "_test_nan", "_test_bad"):
            SCORES.pop(n, None)


def test_head_needed_by_react_ash_vim_is_asked_for(id_ood):
    x, y, *_ = id_ood
    with pytest.raises(ValueError, match="'vim' recomputes logits and needs the classifier"):
        fit_scores(ScoreInputs(x), y, scores=["vim"])


def test_score_inputs_share_intermediates_per_fitted_state():
    """ScoreInputs.shared computes once per (key, state) on the same inputs; another state (same key) recomputes."""
    inputs = ScoreInputs(torch.randn(4, 3), torch.randn(4, 2))
    calls = []
    st_a, st_b = {"w": 1.0}, {"w": 2.0}
    for st in (st_a, st_a, st_b, st_a):
        got = inputs.shared("ratio", lambda st=st: calls.append(st["w"]) or torch.full((4,), st["w"]), of=st)
        assert torch.equal(got, torch.full((4,), st["w"]))
    assert calls == [1.0, 2.0]
    assert inputs.space64("logits") is inputs.space64("logits") and inputs.space64("logits").dtype == torch.float64
    assert torch.equal(inputs.space64("raw"), inputs.features.double())
    assert ScoreInputs(inputs.features, inputs.logits).shared("ratio", lambda: torch.zeros(4), of=st_a).eq(0).all()
