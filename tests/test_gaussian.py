"""The DDU class Gaussians (ncood/ood/gaussian.py): the jitter ladder, degenerate fits, log density against scipy,
the chunked and pruned paths."""
import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from blobs import blobs
from ncood.ood import JITTERS, ClassGaussians, GaussianFitError, fit_class_gaussians
from ncood.ood.gaussian import zero_variance_dims


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
