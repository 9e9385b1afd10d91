"""Class Gaussians vs scipy, the score registry sweep (finite, the declared feature space, params), and detection
metrics vs sklearn / explicit counts / OpenOOD's auc_and_fpr_recall."""
import dataclasses

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ncood import keys
from ncood.ood import (JITTERS, SCORES, SPACES, ClassGaussians, GaussianFitError, Head, ScoreInputs, compute_scores,
                       detection_metrics, fit_class_gaussians, fit_diagnostics, fit_scores, pack_states,
                       register_score, score_params, served_scores, unpack_states)
from ncood.ood.gaussian import zero_variance_dims


def blobs(n_per, d, c, seed=0, scale=5.0):
    """ID features: class c around scale * e_c (+ unit noise); labels 0..C-1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(c).repeat_interleave(n_per)
    centres = scale * torch.eye(c, d)
    return centres[y] + torch.randn(n_per * c, d, generator=g), y


# ---- class Gaussians ----------------------------------------------------------------------------------------

def test_jitter_ladder_is_ddu_list():
    # DDU utils/gmm_utils.py:5-6, written out: 0, finfo(float64).tiny, 1e-308, 1e-307, ..., 1e-1
    assert JITTERS == tuple([0, torch.finfo(torch.double).tiny] + [10 ** exp for exp in range(-308, 0, 1)])
    assert len(JITTERS) == 310 and JITTERS[1] == 2.2250738585072014e-308 and JITTERS[2] == 1e-308
    assert JITTERS[-1] == 0.1 and JITTERS[-12] == 1e-12


def _ladder_without_skips(x: torch.Tensor, y: torch.Tensor) -> float:
    """Every rung of the ladder tried in turn on the full covariances (no skipping): the jitter DDU's loop picks."""
    c = int(y.max()) + 1
    covs = []
    for k in range(c):
        xk = x[y == k].double()
        xk = xk - xk.mean(0)
        covs.append(xk.T @ xk / (xk.shape[0] - 1))
    cov = torch.stack(covs)
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    for eps in JITTERS:
        if not bool(torch.linalg.cholesky_ex(cov + eps * eye).info.any()):
            return eps
    raise AssertionError("no rung worked")


@pytest.mark.parametrize("case", ["zero_dims", "few_samples", "both"])
def test_degenerate_fits_pick_ddus_jitter_and_count_zero_dims(case):
    """Skipping the rungs that leave the matrix unchanged picks exactly the jitter of the full ladder; constant
    feature dims (a dead ReLU channel: exactly 0 for a class) are counted per class."""
    g = torch.Generator().manual_seed(5)
    d = 12
    n = [80, 80] if case == "zero_dims" else [80, 6]  # class 1: 6 samples < d -> singular by construction
    x = torch.randn(sum(n), d, generator=g).abs()
    y = torch.cat([torch.zeros(n[0]), torch.ones(n[1])]).long()
    if case != "few_samples":
        x[y == 0, 3] = 0.0  # dead channel in class 0
        x[y == 1, 3:5] = 0.0  # two in class 1
    gm = fit_class_gaussians(x, y)
    assert gm.jitter == _ladder_without_skips(x, y)
    if case == "zero_dims":  # the zero pivots only need a positive eps: the smallest normal float64 does it
        assert gm.jitter == torch.finfo(torch.float64).tiny
    else:
        assert 1e-20 < gm.jitter < 1e-5
    zero_dims = [0, 0] if case == "few_samples" else [1, 2]
    assert gm.degenerate_dims.tolist() == zero_dims
    ok = fit_class_gaussians(torch.randn(200, d, generator=g), torch.arange(200) % 2)
    assert ok.jitter == 0.0 and ok.degenerate_dims.tolist() == [0, 0]


def test_zero_variance_dims_relative_tolerance():
    d = 4
    tol = d * torch.finfo(torch.float64).eps  # relative to the class's largest variance
    var = torch.tensor([[1.0, 0.5 * tol, 2 * tol, 0.0],  # 0.5 tol and 0 count; 2 tol does not
                        [1e-30, 1e-30, 1e-30, 1e-30],  # a tiny scale is not degenerate by itself
                        [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # all zero: every dim
    assert zero_variance_dims(var).tolist() == [2, 0, 4]


def test_log_density_matches_scipy():
    x, y = blobs(60, 5, 3)
    x = x.double() @ torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # correlated
    gm = fit_class_gaussians(x, y)
    assert gm.jitter == 0.0 and gm.means.dtype == torch.float64
    z = torch.randn(40, 5, dtype=torch.float64) * 3
    per_class = np.stack([
        multivariate_normal(x[y == k].mean(0).numpy(), np.cov(x[y == k].numpy(), rowvar=False, ddof=1)).logpdf(z.numpy())
        for k in range(3)], axis=1)  # (N, C)
    np.testing.assert_allclose(gm.per_class_log_density(z).numpy(), per_class, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(gm.log_density(z).numpy(), logsumexp(per_class, axis=1), rtol=1e-8, atol=1e-8)


def test_singular_class_uses_recorded_jitter():
    g = torch.Generator().manual_seed(2)
    d = 16
    x = torch.cat([torch.randn(100, d, generator=g), torch.randn(5, d, generator=g)])  # class 1: 5 samples < d
    y = torch.cat([torch.zeros(100), torch.ones(5)]).long()
    gm = fit_class_gaussians(x, y)
    assert gm.jitter > 0 and gm.jitter in JITTERS
    assert gm.counts.tolist() == [100, 5]
    dens = gm.log_density(torch.randn(50, d, generator=g))
    assert dens.shape == (50,) and torch.isfinite(dens).all()


def test_fit_fails_loudly():
    g = torch.Generator().manual_seed(3)
    d = 16
    # 2 samples of scale 1e8 in d=16: the rank-1 covariance has entries ~1e16 whose rounding residue (~1)
    # defeats every eps <= 0.1 in the Cholesky.
    x = torch.cat([torch.randn(100, d, generator=g, dtype=torch.float64),
                   1e8 * torch.randn(2, d, generator=g, dtype=torch.float64)])
    y = torch.cat([torch.zeros(100), torch.ones(2)]).long()
    with pytest.raises(GaussianFitError, match=r"class 1: 2 samples.*d=16|d=16.*class 1: 2 samples"):
        fit_class_gaussians(x, y)
    bad = torch.randn(50, 4)
    bad[7, 2] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        fit_class_gaussians(bad, torch.arange(50) % 2)
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        fit_class_gaussians(torch.randn(10, 4), torch.arange(10) % 2, num_classes=3)


def test_chunked_equals_unchunked_and_save_load(tmp_path):
    x, y = blobs(40, 8, 4)
    gm = fit_class_gaussians(x, y)
    z = torch.randn(101, 8)
    full = gm.log_density(z, chunk_size=1000)
    torch.testing.assert_close(gm.log_density(z, chunk_size=7), full, rtol=1e-13, atol=1e-13)  # BLAS blocking
    gm.save(tmp_path / "gmm.pt")
    back = ClassGaussians.load(tmp_path / "gmm.pt")
    assert back.jitter == gm.jitter and torch.equal(back.chol, gm.chol) and torch.equal(back.means, gm.means)
    assert torch.equal(back.degenerate_dims, gm.degenerate_dims)
    assert torch.equal(back.log_density(z), full)


def _counting(monkeypatch):
    """Count the rows each call of the real _mahalanobis solves in full (a spy: the real function runs)."""
    from ncood.ood import gaussian
    real, calls = gaussian._mahalanobis, []

    def spy(chol, mean, z):
        calls.append(z.shape[0])
        return real(chol, mean, z)

    monkeypatch.setattr(gaussian, "_mahalanobis", spy)
    return calls


@pytest.mark.parametrize("layout", ["apart", "overlapping", "ties"])
def test_pruned_log_density_equals_full_logsumexp(layout, monkeypatch):
    """log_density drops classes by an exact bound: equal to the full logsumexp to rounding in every regime."""
    g = torch.Generator().manual_seed(11)
    c, d, n = 4, 96, 150
    scale = {"apart": 8.0, "overlapping": 0.0, "ties": 3.0}[layout]
    centres = scale * torch.randn(c, d, generator=g)
    y = torch.arange(c).repeat_interleave(n)
    spread = 0.5 + torch.rand(c, d, generator=g)  # (C, d) per-class scales
    if layout == "overlapping":  # one distribution for all classes: they differ only by sampling noise
        spread = spread[:1].expand(c, d)
    x = centres[y] + torch.randn(c * n, d, generator=g) * spread[y]
    gm = fit_class_gaussians(x, y)
    if layout == "ties":  # two identical classes: every point has a second class exactly as likely as the best
        gm = ClassGaussians(gm.means[[0, 0, 1, 2]], gm.chol[[0, 0, 1, 2]], gm.counts, gm.jitter)
    z = torch.cat([x[::7], centres.mean(0) + torch.randn(40, d, generator=g)])  # near classes and in between
    full = torch.logsumexp(gm.per_class_log_density(z), dim=1)
    torch.testing.assert_close(gm.log_density(z), full, rtol=1e-13, atol=0)
    near = x[::7]  # (86, d) training points: each near its own class
    calls = _counting(monkeypatch)
    gm.log_density(near)
    solved = sum(calls)  # rows solved in full, over all classes
    if layout == "apart":  # one class per point: the other C - 1 are bounded away
        assert solved == len(near)
    elif layout == "ties":  # the twin of the best class is never dropped (dropping it would be off by log 2)
        twins = int(torch.isin(gm.per_class_log_density(near).argmax(1), torch.tensor([0, 1])).sum())
        assert solved >= len(near) + twins
    else:  # same means: the classes compete, nothing is dropped
        assert solved == c * len(near)


@pytest.mark.parametrize("direct_work", [0, 2**40], ids=["bound", "direct"])
def test_log_density_one_class(direct_work, monkeypatch):
    """One class: the bound's basis is empty and the class is solved in full (either path)."""
    from ncood.ood import gaussian
    monkeypatch.setattr(gaussian, "_DIRECT_WORK", direct_work)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(4))
    gm = fit_class_gaussians(x, torch.zeros(50, dtype=torch.long))
    z = 3 * torch.randn(7, 6)
    torch.testing.assert_close(gm.log_density(z), gm.per_class_log_density(z)[:, 0], rtol=1e-14, atol=0)


@pytest.mark.parametrize("c, d", [(10, 16), (12, 4)], ids=["C<=d", "C-1>d"])
def test_log_density_small_batches_and_more_classes_than_dims(c, d, monkeypatch):
    """A small batch (a served request) is solved for every class; the result equals the bound path's, and both
    work when C - 1 > d (the bound's basis then has d columns per class, not C - 1)."""
    from ncood.ood import gaussian
    g = torch.Generator().manual_seed(5)
    y = torch.arange(c).repeat_interleave(30)
    x = 2 * torch.randn(c, d, generator=g)[y] + torch.randn(c * 30, d, generator=g)
    gm = fit_class_gaussians(x, y)
    z = torch.cat([x[::37], torch.randn(3, d, generator=g)])
    assert z.shape[0] * c * d * d <= gaussian._DIRECT_WORK  # the direct path
    full = torch.logsumexp(gm.per_class_log_density(z), dim=1)
    direct = gm.log_density(z)
    torch.testing.assert_close(direct, full, rtol=1e-14, atol=0)
    monkeypatch.setattr(gaussian, "_DIRECT_WORK", 0)  # the bound path on the same points
    torch.testing.assert_close(gm.log_density(z), direct, rtol=1e-13, atol=0)


def test_gram_lower_triangle():
    from ncood.ood.gaussian import _gram_lower
    x = torch.randn(50, 300, dtype=torch.float64)  # 300 = one 256 block + a 44 remainder
    out = _gram_lower(x, torch.zeros(300, 300, dtype=torch.float64))
    torch.testing.assert_close(torch.tril(out), torch.tril(x.T @ x), rtol=1e-12, atol=1e-12)
    assert not out[:256, 256:].any()  # above the diagonal blocks: not computed


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


# ---- detection metrics --------------------------------------------------------------------------------------

def explicit_fpr95(id_s, ood_s):
    """Largest threshold t with at least 95% of ID scores >= t, by trying every distinct value."""
    best = None
    for t in sorted(set(id_s.tolist())):
        if 100 * np.sum(id_s >= t) >= 95 * id_s.size:
            best = t
    return np.mean(ood_s >= best)


@pytest.mark.parametrize("seed", range(5))
def test_detection_metrics_with_ties(seed):
    rng = np.random.default_rng(seed)
    id_s = rng.integers(0, 12, size=int(rng.integers(20, 400))).astype(float)  # many ties
    ood_s = rng.integers(-3, 9, size=int(rng.integers(20, 400))).astype(float)
    m = detection_metrics(torch.tensor(id_s), ood_s)
    assert set(m) == set(keys.DETECTION_METRICS)
    y = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, np.r_[id_s, ood_s]), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, np.r_[id_s, ood_s]), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -np.r_[id_s, ood_s]), abs=1e-12)
    # ties count half: the exact rank formula
    pairs = (id_s[:, None] > ood_s[None, :]).mean() + 0.5 * (id_s[:, None] == ood_s[None, :]).mean()
    assert m["auroc"] == pytest.approx(pairs, abs=1e-12)
    assert m["fpr95"] == pytest.approx(explicit_fpr95(id_s, ood_s), abs=1e-15)
    swapped = detection_metrics(ood_s, id_s)
    assert swapped["auroc"] == pytest.approx(1 - m["auroc"], abs=1e-12)
    assert swapped["aupr_in"] == pytest.approx(detection_metrics(-id_s, -ood_s)["aupr_out"], abs=1e-12)


def test_fpr95_threshold_exact_at_boundary():
    id_s = np.arange(1, 21, dtype=float)  # 20 ID scores: 95% = 19 accepted -> t = 2
    ood_s = np.array([1.0, 2.0, 2.0, 3.0])
    assert detection_metrics(id_s, ood_s)["fpr95"] == 0.75  # 2, 2, 3 accepted; 1 rejected


def test_perfect_separation_and_bad_input():
    m = detection_metrics(np.linspace(5, 6, 100), np.linspace(0, 1, 50))
    assert m == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95_id_rejected": 0.0}
    with pytest.raises(ValueError, match=r"1 of 3 ood scores are non-finite"):
        detection_metrics([1.0, 2.0], [0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"2 of 2 id scores are non-finite"):
        detection_metrics(torch.tensor([float("inf"), float("-inf")]), [0.0])
    with pytest.raises(ValueError, match="empty"):
        detection_metrics([], [1.0])




def openood_fpr(id_s, ood_s, tpr_th=0.95):
    """OpenOOD's FPR@95, a transcription of openood/evaluators/metrics.py auc_and_fpr_recall (Jingkang50/OpenOOD at
    3c35632, lines 40-49): conf = the scores (ID higher), label -1 marks OoD; OoD is the positive class, ranked by
    -conf; the FPR at the first ROC point whose TPR reaches tpr_th."""
    conf = np.r_[id_s, ood_s]
    label = np.r_[np.zeros(id_s.size), -np.ones(ood_s.size)]
    ood_indicator = np.zeros_like(label)
    ood_indicator[label == -1] = 1
    fpr_list, tpr_list, _ = roc_curve(ood_indicator, -conf)
    return fpr_list[np.argmax(tpr_list >= tpr_th)]


@pytest.mark.parametrize("seed", range(8))
def test_fpr95_id_rejected_is_openoods_fpr(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = (int(v) for v in rng.integers(20, 500, size=2))
    if seed % 2:  # many ties
        id_s, ood_s = rng.integers(0, 15, n_id).astype(float), rng.integers(-4, 10, n_ood).astype(float)
    else:
        id_s, ood_s = rng.normal(1, 1, n_id), rng.normal(0, 1.5, n_ood)
    m = detection_metrics(id_s, ood_s)
    assert m["fpr95_id_rejected"] == openood_fpr(id_s, ood_s)
    # what it means: the smallest t with >= 95% of OoD scored <= t, and the ID share rejected there (s <= t)
    t = min(v for v in np.unique(ood_s) if 100 * np.sum(ood_s <= v) >= 95 * n_ood)
    if seed % 2 == 0:  # no ties, so sklearn's drop_intermediate cannot move the point
        assert m["fpr95_id_rejected"] == pytest.approx(np.mean(id_s <= t), abs=1e-15)


def test_fpr95_id_rejected_follows_sklearns_collinear_thinning():
    """20 tie groups holding one ID and one OoD image each: a straight ROC. The exact rule gives 19/20; OpenOOD's
    roc_curve keeps only the end points of the straight run, so OpenOOD reports 1.0, and so does ncood."""
    s = np.arange(20, dtype=float)
    m = detection_metrics(s, s)
    assert m["fpr95_id_rejected"] == openood_fpr(s, s) == 1.0
    assert m["fpr95"] == 0.95  # the papers' number: no thinning, t = 1 accepts 19 of 20 OoD


def test_the_two_fpr95_conventions_differ():
    id_s = np.r_[np.linspace(5, 10, 95), np.linspace(-10, -5, 5)]  # 5% of ID far in the OoD range
    ood_s = np.r_[np.linspace(-9, 0, 90), np.linspace(6, 7, 10)]  # 10% of OoD inside the ID range
    m = detection_metrics(id_s, ood_s)
    assert m["fpr95"] == pytest.approx(0.10)  # t = 5.0 accepts 95 ID; the 10 OoD at 6-7 pass
    t = np.sort(ood_s)[94]  # 95 of 100 OoD scored <= t = 6.44: ID rejected are the 5 far ones and those <= t
    assert m["fpr95_id_rejected"] == pytest.approx(np.mean(id_s <= t)) == pytest.approx(0.33)
    assert m["fpr95_id_rejected"] == openood_fpr(id_s, ood_s)


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
