"""NC metrics and the NC loss against a plain numpy transcription of docs/method.md#nc-metrics."""
import math

import numpy as np
import pytest
import torch

from ncood import keys
from ncood.collapse import nc_loss, nc_metrics


def reference_nc(h, y, w, pred=None):
    """Straightforward float64 numpy version: d x d matrices, np.linalg.pinv, python loops over classes/pairs."""
    h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
    y = np.asarray(y)
    n, d = h.shape
    c = w.shape[0]
    mu = np.stack([h[y == k].mean(axis=0) for k in range(c)])  # (C, d)
    mu_g = mu.mean(axis=0)
    M = (mu - mu_g).T  # (d, C)
    sw = np.zeros((d, d))
    for i in range(n):
        r = h[i] - mu[y[i]]
        sw += np.outer(r, r)
    sw /= n
    sb = M @ M.T / c
    nc1 = np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10)) / c

    def cv(vs):
        norms = [np.linalg.norm(v) for v in vs]
        return np.std(norms, ddof=1) / np.mean(norms)

    def ea(vs):
        total = 0.0
        for a in range(c):
            for b in range(c):
                if a != b:
                    cos = vs[a] @ vs[b] / (np.linalg.norm(vs[a]) * np.linalg.norm(vs[b]))
                    total += abs(cos + 1.0 / (c - 1))
        return total / (c * (c - 1))

    unit = M / np.linalg.norm(M, axis=0)  # slides Eq. 14: each centred mean scaled to length 1
    gram = unit.T @ unit
    etf = (np.eye(c) - np.ones((c, c)) / c) / math.sqrt(c - 1)
    out = {
        "nc1": nc1,
        "nc2_equinorm_means": cv(M.T),
        "nc2_equinorm_classifier": cv(w),
        "nc2_equiangular_means": ea(M.T),
        "nc2_equiangular_classifier": ea(w),
        "nc2_etf_distance": np.linalg.norm(gram / np.linalg.norm(gram) - etf),
        "nc3_self_duality": np.linalg.norm(w.T / np.linalg.norm(w) - M / np.linalg.norm(M)) ** 2,
    }
    nearest = [min(range(c), key=lambda k: np.linalg.norm(h[i] - mu[k])) for i in range(n)]
    out["nc4_ncc_error"] = sum(nearest[i] != y[i] for i in range(n)) / n  # seed paper Sec. 3.2: vs the labels
    if pred is not None:
        out["nc4_ncc_mismatch"] = sum(nearest[i] != pred[i] for i in range(n)) / n  # Papyan: vs the network
    return out


def simplex_etf(c, d, seed=0):
    """(C, d) rows: a randomly rotated simplex ETF, centred, unit norm, pairwise cosine -1/(C-1)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, c, generator=g, dtype=torch.float64))  # (d, C) orthonormal columns
    e = torch.eye(c, dtype=torch.float64) - 1.0 / c
    return (e @ q.T) * math.sqrt(c / (c - 1))


@pytest.mark.parametrize("n,d,c", [(300, 20, 5), (240, 3, 8), (200, 12, 10)])
def test_nc_metrics_match_reference(n, d, c):
    g = torch.Generator().manual_seed(n + d + c)
    y = torch.cat([torch.arange(c), torch.randint(0, c, (n - c,), generator=g)])  # every class, unbalanced
    h = torch.randn(n, d, generator=g) + 0.5 * torch.randn(c, d, generator=g)[y]
    w = torch.randn(c, d, generator=g)
    pred = torch.randint(0, c, (n,), generator=g)
    got = nc_metrics(h, y, w, predictions=pred)
    ref = reference_nc(h.numpy(), y.numpy(), w.numpy(), pred.numpy())
    assert set(got) == set(keys.NC_METRICS)
    for k, v in ref.items():
        assert isinstance(got[k], float)
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k


def test_nc4_mismatch_only_with_predictions_error_always():
    h, y, w = torch.randn(50, 4), torch.arange(50) % 3, torch.randn(3, 4)
    got = nc_metrics(h, y, w)
    assert "nc4_ncc_mismatch" not in got and 0 < got["nc4_ncc_error"] < 1


def test_nc4_error_counts_labels_mismatch_counts_predictions():
    """Two well separated classes, 3 of 20 samples labelled with the other class: the NCC rule misclassifies exactly
    those 3 (the seed paper's NC4, Sec. 3.2) and agrees with a network that predicts the nearest cluster (Papyan's)."""
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0]])
    cluster = torch.arange(20) % 2
    h = centres[cluster] + 0.1 * torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    y = cluster.clone()
    y[[0, 1, 2]] = 1 - y[[0, 1, 2]]  # label noise: 3 samples sit in the other class's cluster
    got = nc_metrics(h, y, torch.randn(2, 2), predictions=cluster)
    assert got["nc4_ncc_error"] == pytest.approx(3 / 20) and got["nc4_ncc_mismatch"] == 0.0


def test_exact_etf_is_fully_collapsed():
    c, d, per = 10, 16, 7
    means = simplex_etf(c, d) * 3.0 + torch.randn(d, dtype=torch.float64)  # shifted: NC uses mu_c - mu_G
    y = torch.arange(c).repeat(per)
    h = means[y]  # zero within-class spread: Sigma_W = 0 -> NC1 = 0
    w = 2.5 * simplex_etf(c, d)  # classifier = the centred means up to scale
    got = nc_metrics(h, y, w, predictions=y)
    for k, v in got.items():
        assert abs(v) < 1e-9, (k, v)


def test_random_features_have_large_nc1():
    # Pure noise: Sigma_W ~ I_d, while the class means differ only by sampling noise (variance 1/n_c per
    # coordinate), so Sigma_B's C-1 eigenvalues are ~ d / (C n_c) each and NC1 ~ (C-1)^2 n_c / (C d):
    # ~50 for C=10, n_c=100, d=16, far above trained networks (2.69 / 0.17 in the seed paper's Table 3).
    g = torch.Generator().manual_seed(1)
    y = torch.arange(1000) % 10
    h = torch.randn(1000, 16, generator=g)
    assert nc_metrics(h, y, torch.randn(10, 16, generator=g))["nc1"] > 20


def test_absent_class_and_bad_labels_raise():
    h, w = torch.randn(30, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"classes \[3\]"):
        nc_metrics(h, torch.arange(30) % 3, w)
    with pytest.raises(ValueError, match="labels must lie"):
        nc_metrics(h, torch.arange(30) % 5, w)


def test_nc_loss_equals_metric_sum_in_float64():
    g = torch.Generator().manual_seed(3)
    c, d = 6, 24
    y = torch.arange(180) % c
    h = torch.randn(180, d, generator=g, dtype=torch.float64) + torch.randn(c, d, generator=g, dtype=torch.float64)[y]
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    m = nc_metrics(h, y, w)
    terms = ("nc1", "nc2_equinorm_means", "nc2_equinorm_classifier", "nc2_equiangular_means",
             "nc2_equiangular_classifier", "nc3_self_duality")
    expected = sum(m[k] for k in terms)
    assert float(nc_loss(h, y, w, ridge=0.0)) == pytest.approx(expected, rel=1e-9)
    assert float(nc_loss(h, y, w)) == pytest.approx(expected, rel=1e-5)  # default relative ridge 1e-6
    loss32 = nc_loss(h.float(), y, w.float())
    assert loss32.dtype == torch.float32 and float(loss32) == pytest.approx(expected, rel=1e-4)


def test_nc_loss_on_etf_is_zero_with_finite_gradient():
    c, d = 10, 16
    y = torch.arange(c).repeat(5)
    h = (simplex_etf(c, d)[y] + 0.3).float().requires_grad_()
    w = simplex_etf(c, d).float().requires_grad_()
    loss = nc_loss(h, y, w)
    loss.backward()
    assert loss.item() < 1e-5
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()


def test_nc_loss_skips_classes_absent_from_batch():
    c, d = 5, 8
    y = torch.arange(40) % 3  # classes 3, 4 absent
    h, w = torch.randn(40, d), torch.randn(c, d)
    assert float(nc_loss(h, y, w)) == pytest.approx(float(nc_loss(h, y, w[:3])), rel=1e-6)
    with pytest.raises(ValueError, match="two classes"):
        nc_loss(h, torch.zeros(40, dtype=torch.long), w)


@pytest.fixture
def one_thread():
    """Hundreds of tiny ops: OpenMP hand-off costs ~1 ms per op on a busy 2-core box, one thread ~10 us."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_optimizing_nc_loss_collapses_free_features(one_thread):
    torch.manual_seed(0)
    c, d = 5, 16
    y = torch.arange(100) % c
    h = torch.randn(100, d, requires_grad=True)
    w = torch.randn(c, d, requires_grad=True)
    before = nc_metrics(h.detach(), y, w.detach())
    opt = torch.optim.Adam([h, w], lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        loss = nc_loss(h, y, w)
        loss.backward()
        assert torch.isfinite(h.grad).all()
        opt.step()
    after = nc_metrics(h.detach(), y, w.detach())
    assert after["nc1"] < 0.05 * before["nc1"]  # ~5.7 -> ~0.001 in practice
    assert after["nc2_equiangular_means"] < 0.1 * before["nc2_equiangular_means"]  # ~0.14 -> ~0.002
    assert after["nc3_self_duality"] < before["nc3_self_duality"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nc_metrics_on_cuda_match_cpu():
    h, y, w = torch.randn(500, 32), torch.arange(500) % 10, torch.randn(10, 32)
    cpu = nc_metrics(h, y, w, predictions=y)
    gpu = nc_metrics(h.cuda(), y.cuda(), w.cuda(), predictions=y.cuda())
    for k in cpu:
        assert gpu[k] == pytest.approx(cpu[k], rel=1e-9, abs=1e-12)
    assert torch.isfinite(nc_loss(h.cuda(), y.cuda(), w.cuda()))


def test_nc_loss_under_autocast_and_low_precision_inputs():
    h, y, w = torch.randn(60, 8), torch.arange(60) % 4, torch.randn(4, 8)
    ref = nc_loss(h, y, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nc_loss(h, y, w)
    assert inside.dtype == torch.float32 and float(inside) == pytest.approx(float(ref), rel=1e-6)
    low = nc_loss(h.bfloat16(), y, w.bfloat16())
    assert low.dtype == torch.float32 and torch.isfinite(low)
