"""The post-hoc detectors (ncood/ood/posthoc.py) against pytorch-ood 0.4.0 and numpy transcriptions of the papers'
code, on fixed features: scores equal to 1e-5 relative, AUROC equal to 1e-6 (issue 15's acceptance)."""
import numpy as np
import pytest
import torch
from pytorch_ood.detector import ASH, KNN, Mahalanobis, ReAct, ViM
from scipy.special import logsumexp
from sklearn.covariance import EmpiricalCovariance
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from ncood.ood import Head, ScoreInputs, compute_scores, detection_metrics, fit_scores
from ncood.ood.posthoc import vim_dim

C, D, N_PER = 4, 16, 100


@pytest.fixture(scope="module")
def feats():
    """Train/ID-test/OoD features of a fake L2-free model: C correlated Gaussian blobs in D=16 (post-ReLU-like:
    shifted positive), a random head; OoD a broader cloud. float64 throughout (the oracles' precision)."""
    g = torch.Generator().manual_seed(0)
    mix = torch.eye(D, dtype=torch.float64) + 0.3 * torch.randn(D, D, generator=g, dtype=torch.float64)
    centres = 3 * torch.rand(C, D, generator=g, dtype=torch.float64)

    def draw(n_per, spread=1.0):
        y = torch.arange(C).repeat_interleave(n_per)
        return (centres[y] + spread * torch.randn(len(y), D, generator=g, dtype=torch.float64) @ mix).abs() + 0.1, y

    x, y = draw(N_PER)
    test_x, _ = draw(40)
    ood_x = (4 * torch.rand(200, D, generator=g, dtype=torch.float64) - 0.5).abs()
    head = Head(torch.randn(C, D, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64))
    return x, y, test_x, ood_x, head


def ncood_scores(name, feats, params=None):
    x, y, test_x, ood_x, head = feats
    fit = fit_scores(ScoreInputs(x, head(x)), y, num_classes=C, head=head, scores=[name], params=params)
    return [compute_scores(ScoreInputs(z, head(z)), fit)[name].numpy() for z in (test_x, ood_x)]


def assert_same(ours, theirs, rtol=1e-5, of_scale=False):
    """Scores equal to rtol (relative; of_scale: relative to the largest |score|, for an oracle that computes in
    float32, whose error does not shrink where a score crosses zero) and the AUROC they give equal to 1e-6."""
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0 if of_scale else rtol, atol=rtol * np.abs(b).max() if of_scale else 0)
    assert detection_metrics(*ours)["auroc"] == pytest.approx(detection_metrics(*theirs)["auroc"], abs=1e-6)


@pytest.fixture
def float64_default():
    """pytorch-ood allocates its fitted tensors with the default dtype: float64 makes it an exact oracle."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_mahalanobis_matches_pytorch_ood(feats, float64_default):
    """pytorch-ood: 0.5 min_c d^T (S + 1e-6 I)^-1 d with S the class scatter NOT divided by N (an outlier score);
    ncood: -min_c d^T Sigma^+ d with Sigma = S / N (Lee et al. eq. 2). So ncood = -2 N x pytorch-ood, up to the
    ridge (1e-6 against eigenvalues of S ~ N: 1e-8 relative)."""
    x, y, test_x, ood_x, _ = feats
    det = Mahalanobis(None).fit_features(x, y)
    theirs = [-2 * x.shape[0] * det.predict_features(z).numpy() for z in (test_x, ood_x)]
    assert_same(ncood_scores("mahalanobis", feats), theirs)


def lee_mahalanobis(x, y, z):
    """The ViM code's Mahalanobis (haoqiwang/vim benchmark.py:318-345, Lee et al.'s estimator): sklearn
    EmpiricalCovariance(assume_centered=True) of the class-centred train features, its precision_ (pinvh)."""
    x, y, z = x.numpy(), y.numpy(), z.numpy()
    means = np.stack([x[y == c].mean(0) for c in range(C)])
    prec = EmpiricalCovariance(assume_centered=True).fit(x - means[y]).precision_
    return -np.stack([np.einsum("nd,de,ne->n", z - m, prec, z - m) for m in means], 1).min(1)


def test_mahalanobis_matches_lees_estimator_also_when_singular(feats):
    """A constant feature and a duplicated one make Sigma singular (as collapsed features are): the pseudo-inverse
    ignores the null directions, exactly like sklearn's precision_."""
    x, y, test_x, ood_x, head = feats
    sing = lambda t: torch.cat([t, torch.full_like(t[:, :1], 0.7), t[:, :1]], dim=1)  # noqa: E731  (N, D + 2)
    xs, ts, os_ = sing(x), sing(test_x), sing(ood_x)
    ts[:, -2] += 0.5  # test points leave the constant direction: pinv gives it no weight
    wide = Head(torch.cat([head.weight, torch.zeros(C, 2, dtype=torch.float64)], 1), head.bias)
    fit = fit_scores(ScoreInputs(xs), y, num_classes=C, head=wide, scores=["mahalanobis"])
    assert int(fit.state["mahalanobis"]["rank"]) == D
    ours = [compute_scores(ScoreInputs(z), fit, ["mahalanobis"])["mahalanobis"].numpy() for z in (ts, os_)]
    assert_same(ours, [lee_mahalanobis(xs, y, z) for z in (ts, os_)])


def test_knn_matches_pytorch_ood(feats):
    x, y, test_x, ood_x, _ = feats
    for k in (1, 50):
        det = KNN(None, k=k).fit_features(x, y)
        theirs = [-det.predict_features(z).numpy() for z in (test_x, ood_x)]
        assert_same(ncood_scores("knn", feats, {"knn": {"k": k}}), theirs)


def official_vim(x, head, z, dim):
    """ViM as its code computes it (haoqiwang/vim benchmark.py:149, 230-258), float64 numpy."""
    w, b = head.weight.numpy(), head.bias.numpy()
    x, z = x.numpy(), z.numpy()
    u = -np.linalg.pinv(w) @ b
    ec = EmpiricalCovariance(assume_centered=True).fit(x - u)
    eig_vals, eigen_vectors = np.linalg.eig(ec.covariance_)
    ns = np.ascontiguousarray((eigen_vectors.T[np.argsort(eig_vals * -1)[dim:]]).T)
    alpha = (x @ w.T + b).max(-1).mean() / np.linalg.norm((x - u) @ ns, axis=-1).mean()
    return -alpha * np.linalg.norm((z - u) @ ns, axis=-1) + logsumexp(z @ w.T + b, axis=-1)


@pytest.mark.parametrize("dim", [None, 5])
def test_vim_matches_pytorch_ood_and_the_vim_code(feats, dim):
    x, y, test_x, ood_x, head = feats
    used = vim_dim(D) if dim is None else dim
    assert vim_dim(D) == D // 2 and vim_dim(512) == 256 and vim_dim(768) == 512 and vim_dim(2048) == 1000
    det = ViM(None, d=used, w=head.weight, b=head.bias).fit_features(x, y)  # pytorch-ood computes in float32:
    theirs = [-det.predict_features(z).double().numpy() for z in (test_x, ood_x)]  # ~7e-6 of the scale apart
    ours = ncood_scores("vim", feats, {"vim": {"dim": dim}})
    assert_same(ours, theirs, of_scale=True)
    assert_same(ours, [official_vim(x, head, z, used) for z in (test_x, ood_x)], rtol=1e-9)


def test_react_matches_the_formula_and_pytorch_ood(feats):
    """ReAct: energy(min(x, c) W^T + b), c = np.percentile of every train activation at 90."""
    x, y, test_x, ood_x, head = feats
    w, b = head.weight.numpy(), head.bias.numpy()
    c = np.percentile(x.float().numpy(), 90)
    formula = [logsumexp(np.minimum(z.numpy(), c) @ w.T + b, axis=-1) for z in (test_x, ood_x)]
    ours = ncood_scores("react", feats)
    assert_same(ours, formula)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.float(), y), batch_size=64)
    det = ReAct(backbone=lambda t: t, head=lambda t: head(t), percentile=0.9).fit(loader)  # pytorch-ood's own fit
    assert_same(ours, [-det.predict_feature_maps(z).numpy() for z in (test_x, ood_x)])


def ash_b_formula(z, p):
    """ASH-B (Djurisic et al. 2023; OpenOOD openood/networks/ash_net.py ash_b): keep the k = n - round(n p) largest
    activations of each sample, set them to sum(x) / k, zero the rest."""
    n = z.shape[1]
    k = n - int(np.round(n * p))
    out = np.zeros_like(z)
    top = np.argsort(-z, axis=1, kind="stable")[:, :k]
    np.put_along_axis(out, top, (z.sum(1) / k)[:, None], axis=1)
    return out


@pytest.mark.parametrize("percentile", [0.9, 0.65])
def test_ash_b_matches_the_formula_and_pytorch_ood(feats, percentile):
    x, y, test_x, ood_x, head = feats
    w, b = head.weight.numpy(), head.bias.numpy()
    formula = [logsumexp(ash_b_formula(z.numpy(), percentile) @ w.T + b, axis=-1) for z in (test_x, ood_x)]
    ours = ncood_scores("ash", feats, {"ash": {"percentile": percentile}})
    assert_same(ours, formula)
    det = ASH(backbone=lambda t: t[:, :, None, None], head=lambda t: head(t.flatten(1)), variant="ash-b",
              percentile=percentile)
    assert_same(ours, [-det.predict(z).numpy() for z in (test_x, ood_x)])
    other = ncood_scores("ash", feats, {"ash": {"variant": "ash-s", "percentile": percentile}})
    assert not np.allclose(other[0], ours[0])  # the variant parameter reaches the shaping


def neco_code(x, z, logits, dim, standardize=True):
    """NECO as the NECO authors' code computes it (function `neco`: StandardScaler, PCA over all dimensions,
    ||PCA(s(z))[:dim]|| / ||s(z)||), and x max logit for the max-logit variant."""
    x, z = x.numpy(), z.numpy()
    if standardize:
        ss = StandardScaler()
        xs, zs = ss.fit_transform(x), ss.transform(z)
    else:
        xs, zs = x, z
    pca = PCA(x.shape[1]).fit(xs)
    ratio = np.linalg.norm(pca.transform(zs)[:, :dim], axis=1) / np.linalg.norm(zs, axis=1)
    return ratio, ratio * logits.numpy().max(1)


@pytest.mark.parametrize("params", [{}, {"dim": 6}, {"standardize": False, "dim": 3}])
def test_neco_matches_the_neco_code(feats, params):
    x, y, test_x, ood_x, head = feats
    dim = params.get("dim", C)
    ref = [neco_code(x, z, head(z), dim, params.get("standardize", True)) for z in (test_x, ood_x)]
    assert_same(ncood_scores("neco", feats, {"neco": params}), [r[0] for r in ref])
    assert_same(ncood_scores("neco_maxlogit", feats, {"neco": params}), [r[1] for r in ref])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_score_on_cuda_equals_cpu(feats):
    """Fit and score on the GPU (states stay there) give the CPU's numbers (float64: 1e-6 of the scale)."""
    from ncood.ood import SCORES

    x, y, test_x, ood_x, head = feats
    for name in SCORES:
        got, want = [], []
        for dev, out in (("cuda", got), ("cpu", want)):
            h = head.to(dev)
            fit = fit_scores(ScoreInputs(x.to(dev), h(x.to(dev))), y.to(dev), num_classes=C, head=h, scores=[name])
            out += [compute_scores(ScoreInputs(z.to(dev), h(z.to(dev))), fit)[name].cpu().numpy()
                    for z in (test_x, ood_x)]
        assert_same(got, want, rtol=1e-6, of_scale=True)


def test_ash_variants_are_pytorch_oods():
    """posthoc.ASH_VARIANTS pins pytorch-ood's ASH.variants (imported lazily there, not at registry import)."""
    from ncood.ood import posthoc

    assert sorted(posthoc.ASH_VARIANTS) == sorted(ASH.variants)
