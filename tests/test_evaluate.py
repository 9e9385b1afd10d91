"""evaluate(): one feature pass per image set -> every expected key, finite; extract() restores modes; the scores
and the NC metrics read the classifier's input (L2 and ETF-projector models)."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from ncood import keys
from ncood.evaluate import evaluate, extract, format_results
from ncood.ood import SCORES

C, D = 4, 16


class TinyNet(nn.Module):
    """(B, 1, 8, 8) -> (logits (B, C), features (B, D)); BatchNorm makes train/eval mode observable."""

    def __init__(self, l2: bool = False):
        super().__init__()
        self.l2 = l2
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, D), nn.BatchNorm1d(D), nn.LeakyReLU(0.01))
        self.classifier = nn.Linear(D, C)

    def classifier_input(self, z):
        return nn.functional.normalize(z, dim=1) if self.l2 else z

    def forward(self, x):
        z = self.encoder(x)
        return self.classifier(self.classifier_input(z)), z


def split(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    return SimpleNamespace(x=torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1) * 0.5, y=y)


@pytest.fixture(scope="module")
def data():
    return SimpleNamespace(train=split(240, 0), val=split(40, 1), test=split(80, 2))


OOD = {"noise": torch.rand(60, 1, 8, 8) * 4 - 2, "flat": torch.full((30, 1, 8, 8), 0.25)}


def expected_keys(ood_names, scores, with_val=True):
    want = {keys.nc_key(m) for m in keys.NC_METRICS} | {keys.ACC_TEST, keys.EVAL_TIME}
    want |= {keys.ood_key(s, c, m) for s in ood_names for c in scores for m in keys.DETECTION_METRICS}
    fits = {SCORES[c].fit_key for c in scores} - {None}
    want |= {keys.fit_key(f, name) for f in fits for name in FIT_DIAGNOSTICS.get(f, ())}
    return want | ({keys.ACC_VAL} if with_val else set())


FIT_DIAGNOSTICS = {"gmm": ("jitter", "degenerate_dims"), "mahalanobis": ("rank",), "vim": ("alpha", "dim"), "react": ("threshold",),
                   "neco": ("dim",)}


@pytest.mark.parametrize("l2", [False, True])
def test_evaluate_returns_every_key_finite(l2, data):
    torch.manual_seed(0)
    model = TinyNet(l2)
    model.train()
    results, fit = evaluate(model, data, OOD, l2=l2, batch_size=64)
    assert set(results) == expected_keys(OOD, SCORES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in results.values())
    assert results[keys.GMM_JITTER] == fit.gaussians.jitter
    assert (fit.gaussians.means.norm(dim=1).max() <= 1 + 1e-6) == l2  # L2: the Gaussians live on the sphere
    assert model.training and model.encoder[2].training  # mode restored
    table = format_results(results)
    assert "noise / gmm" in table and "AUROC" in table and "nc1" in table


def test_evaluate_score_subset_and_empty_val(data):
    empty = SimpleNamespace(x=torch.empty(0, 1, 8, 8), y=torch.empty(0, dtype=torch.long))
    no_val = SimpleNamespace(train=data.train, val=empty, test=data.test)
    results, fit = evaluate(TinyNet(), no_val, {"noise": OOD["noise"]}, scores=["feature_norm", "msp"])
    want = expected_keys(["noise"], ["feature_norm", "msp"], with_val=False)
    assert set(results) == want and "gmm" not in fit.state


def test_evaluate_refuses_a_model_without_the_interface_or_a_wrong_l2(data):
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, C)

        def forward(self, x):
            return self.lin(x.flatten(1)), x.flatten(1)

    with pytest.raises(TypeError, match="lacks \\['classifier', 'classifier_input'\\].*as_feature_classifier"):
        evaluate(Bare(), data, OOD)
    with pytest.raises(ValueError, match="evaluate\\(l2=True\\) but the model has l2=False"):
        evaluate(TinyNet(False), data, OOD, l2=True)


def test_extract_restores_mixed_modes_and_batches(data):
    model = TinyNet().eval()
    model.encoder[2].train()  # a submodule in train mode under an eval parent survives
    f_small, l_small = extract(model, data.test.x, batch_size=7)
    assert not model.training and model.encoder[2].training
    model.eval()
    f_big, l_big = extract(model, data.test.x, batch_size=1000)
    assert f_small.shape == (80, D) and l_small.shape == (80, C) and f_small.dtype == torch.float32
    torch.testing.assert_close(f_small, f_big)
    torch.testing.assert_close(l_small, l_big)
    f_eval, l_eval = extract(model, data.test.x, batch_size=1000, in_eval=True)  # no walk: the same pass
    assert torch.equal(f_eval, f_big) and torch.equal(l_eval, l_big) and not model.training
    with pytest.raises(ValueError, match="training mode"):
        extract(model.train(), data.test.x, in_eval=True)


def test_evaluate_with_real_model(data):
    models = pytest.importorskip("ncood.models")
    if not hasattr(models, "create_model"):
        pytest.skip("ncood.models.create_model not available yet")
    torch.manual_seed(0)
    model = models.create_model("resnet18", num_classes=C, in_channels=1, input_size=8, width=8, l2=True)
    results, _ = evaluate(model, data, OOD, l2=True, batch_size=128)
    assert set(results) == expected_keys(OOD, SCORES)
    assert all(math.isfinite(v) for v in results.values())


def _papers_resnet(device: str = "cpu") -> nn.Module:
    """The papers' network (SN + leaky/GAP + L2), width-reduced, with a few BN statistics so eval mode matters."""
    from ncood.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=C, in_channels=1, input_size=8, width=8, l2=True,
                         spectral_norm=True, leaky_gap=True).to(device)
    with torch.no_grad():  # two training-mode passes: running BN statistics and SN estimates that are not defaults
        model.train()
        for _ in range(2):
            model(torch.randn(32, 1, 8, 8, device=device))
    return model


def _plain_fp32_forward(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The reference: model.eval(), no autocast, one batch -> (features, logits)."""
    model.eval()
    with torch.no_grad():
        logits, z = model(x)
    return z, logits


def test_extract_is_a_plain_fp32_forward_on_cpu(data):
    """Bit for bit the plain fp32 eval forward, also when called inside a bf16 autocast region (which would
    otherwise run the convs and linears in bf16)."""
    model = _papers_resnet()
    x = data.test.x
    ref_f, ref_l = _plain_fp32_forward(model, x)
    model.train()
    for outer in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer):
            f, lg = extract(model, x, batch_size=len(x))
        assert f.dtype == lg.dtype == torch.float32
        assert torch.equal(f, ref_f) and torch.equal(lg, ref_l), f"outer autocast={outer}"
    assert model.training  # restored
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the old extraction did on CUDA, here on CPU
        bf16_f = _plain_fp32_forward(model, x)[0].float()
    assert not torch.equal(bf16_f, ref_f)  # the test can tell the two apart


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_extract_is_a_plain_fp32_forward_on_cuda(data):
    """On CUDA too: no bf16 autocast and no TF32 (cuDNN uses TF32 for fp32 convs by default); the global precision
    settings are restored afterwards."""
    model = _papers_resnet("cuda").to(memory_format=torch.channels_last)  # as the Trainer leaves it
    x = data.test.x.cuda()
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        ref_f, ref_l = _plain_fp32_forward(model, x)
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved
    for outer in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=outer):
            f, lg = extract(model, x, batch_size=len(x))
        assert (conv.fp32_precision, matmul.fp32_precision) == saved
        torch.testing.assert_close(f, ref_f, rtol=0, atol=0)
        torch.testing.assert_close(lg, ref_l, rtol=0, atol=0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16_f = _plain_fp32_forward(model, x)[0].float()
    assert not torch.equal(bf16_f, ref_f)


class DeadChannelNet(TinyNet):
    """TinyNet with ReLU and feature channel 0 dead (weights 0, bias -1): zero variance in every class."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, D), nn.ReLU())
        with torch.no_grad():
            self.encoder[1].weight[0] = 0.0
            self.encoder[1].bias[0] = -1.0


def test_degenerate_fit_is_logged_and_warned_by_the_trial(data):
    """The measurement returns the facts (jitter, zero-variance dims); the trial's Evaluation warns, naming the
    condition and seed, at the first degenerate fit and again at the last epoch only."""
    from ncood.config import make_config
    from ncood.pipeline import DegenerateGaussianWarning, Evaluation

    torch.manual_seed(0)
    results, _ = evaluate(DeadChannelNet(), data, OOD, l2=False)
    assert results[keys.GMM_JITTER] == torch.finfo(torch.float64).tiny  # DDU's second rung: the dead dim only
    assert results[keys.GMM_DEGENERATE_DIMS] == 1.0
    cfg = make_config("digits", epochs=3, seed=7, eval_every=1, spectral_norm=False, leaky_gap=False)
    ev = Evaluation({"noise": OOD["noise"]}, cfg)
    trainer = SimpleNamespace(model=DeadChannelNet(), data=data)
    with pytest.warns(DegenerateGaussianWarning, match=rf"{cfg.condition} seed 7, epoch 1: .*jitter 2.2\d*e-308"):
        ev(trainer, 1, {})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev(trainer, 2, {})  # already warned, not the last epoch: silent
    with pytest.warns(DegenerateGaussianWarning, match="epoch 3"):
        ev(trainer, 3, {})
    fine = Evaluation({"noise": OOD["noise"]}, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics: dict[str, float] = {}
        fine(SimpleNamespace(model=TinyNet(), data=data), 3, metrics)  # leaky + BN: no jitter, no warning
    assert metrics[keys.GMM_JITTER] == 0.0 and metrics[keys.GMM_DEGENERATE_DIMS] == 0.0


@pytest.mark.parametrize("kind", ["plain", "l2", "projector"])
def test_scores_and_nc_read_the_classifier_input(kind, data):
    """Plain: z; L2: z / ||z||; ETF projector (ICML 2025): normalize(P(z)), where the ICML code measures OoD. The
    GMM class means and the score inputs are those of model.classifier_input(z); feature_norm keeps the raw z."""
    from ncood.evaluate import feature_pass
    from ncood.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=C, in_channels=1, input_size=8, width=8, l2=kind == "l2",
                         etf_projector=kind == "projector").eval()
    results, fit = evaluate(model, data, {"noise": OOD["noise"]}, batch_size=128)
    train = feature_pass(model, data.train.x)
    with torch.no_grad():
        want_in = model.classifier_input(train.features)
    assert (train.classifier_input is None) == (kind == "plain")
    torch.testing.assert_close(train.space("input"), want_in)
    means = torch.stack([want_in[data.train.y == c].double().mean(0) for c in range(C)])
    torch.testing.assert_close(fit.gaussians.means, means, rtol=1e-6, atol=1e-7)
    if kind != "plain":
        assert not torch.allclose(train.space("raw"), train.space("input"))
    test = feature_pass(model, data.test.x)
    torch.testing.assert_close(fit.head(test.space("input")).float(), test.logits, rtol=1e-4, atol=1e-5)


# ---- evaluate() on constructed features with known answers -----------------------------------------------------------
class FixedFeatures(nn.Module):
    """(N, 1, 1, 4) images whose pixels are the features: z = x.flatten(1). The classifier reads
    classifier_input(z): z itself ("plain"), z / ||z|| ("l2", seed paper eq. 9), or normalize(P z) with P dropping
    the 4th coordinate ("projector", the ICML 2025 ETF projector's normalized output). Its weights are the first
    three unit vectors: the logit of class c is x_c."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.l2 = kind, kind == "l2"
        self.classifier = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(3, 4))

    def classifier_input(self, z):
        if self.kind == "plain":
            return z
        x = nn.functional.normalize(z, dim=1)
        return x if self.kind == "l2" else nn.functional.pad(nn.functional.normalize(z[:, :3], dim=1), (0, 1))

    def forward(self, x):
        z = x.flatten(1)
        return self.classifier(self.classifier_input(z)), z


def clusters(n_per_class: int, seed: int) -> SimpleNamespace:
    """Class c at 10 * e_c (c = 0, 1, 2; 4th coordinate 0) with N(0, 0.1^2) noise: separable by a wide margin."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per_class)
    z = 10 * torch.eye(3, 4)[y] + 0.1 * torch.randn(len(y), 4, generator=g)
    z[:, 3] = 0.1 * torch.randn(len(y), generator=g)
    return SimpleNamespace(x=z.view(-1, 1, 1, 4), y=y)


@pytest.fixture(scope="module")
def separable():
    return SimpleNamespace(train=clusters(50, 0), val=None, test=clusters(30, 1))


KNOWN_SCORES = ["gmm", "feature_norm", "msp", "energy"]


def test_separable_features_give_auroc_one_and_fpr95_zero(separable):
    """Plain model, OoD near the origin (-0.5 * (1, 1, 1, 0) + noise): about 10 from every class mean and with
    norm about 1 (ID: about 10), so both the GMM density and the feature norm separate perfectly."""
    noise = 0.1 * torch.randn(90, 4, generator=torch.Generator().manual_seed(2))
    far = -0.5 * torch.tensor([1.0, 1.0, 1.0, 0.0]) + noise
    results, _ = evaluate(FixedFeatures("plain"), separable, {"far": far.view(-1, 1, 1, 4)}, scores=KNOWN_SCORES)
    assert results[keys.ACC_TEST] == 1.0
    for score in ("gmm", "feature_norm"):
        assert results[keys.ood_key("far", score, "auroc")] == pytest.approx(1.0)
        assert results[keys.ood_key("far", score, "fpr95")] == 0.0
    assert results[keys.nc_key("nc1")] < 1e-3  # within-class spread 0.1 vs class means 10 apart


def test_l2_model_feature_norm_reads_z_and_gmm_reads_the_normalized_features(separable):
    """OoD = the ID test images scaled by 1/8 (exact in floating point): same directions, 8x smaller norm. The
    feature_norm score, taken on z, separates them perfectly; every score on z / ||z|| sees identical inputs (AUROC
    exactly 0.5). Were feature_norm taken on z / ||z||, it would be 1 for every image and give 0.5 as well."""
    small = separable.test.x * 0.125
    results, _ = evaluate(FixedFeatures("l2"), separable, {"small": small}, scores=KNOWN_SCORES)
    assert results[keys.ACC_TEST] == 1.0
    assert results[keys.ood_key("small", "feature_norm", "auroc")] == pytest.approx(1.0)
    for score in ("gmm", "msp", "energy"):
        assert results[keys.ood_key("small", score, "auroc")] == pytest.approx(0.5, abs=1e-9), score


def test_projector_model_scores_are_measured_at_the_projector_output(separable):
    """OoD = the ID test images with a large 4th coordinate, which the projector drops: at its normalized output they
    are the ID images (AUROC exactly 0.5 for the GMM and the logit scores). The raw z differs: feature_norm, taken on
    z, ranks every shifted image (norm ~51) above every ID one (~10), AUROC 0."""
    shifted = separable.test.x.clone()
    shifted[..., 3] = 50.0
    results, fit = evaluate(FixedFeatures("projector"), separable, {"shifted": shifted}, scores=KNOWN_SCORES)
    assert results[keys.ACC_TEST] == 1.0
    assert fit.gaussians.means[:, 3].abs().max() == 0  # the class Gaussians live in the projector's output
    assert results[keys.ood_key("shifted", "feature_norm", "auroc")] == pytest.approx(0.0)
    for score in ("gmm", "msp", "energy"):
        assert results[keys.ood_key("shifted", score, "auroc")] == pytest.approx(0.5, abs=1e-9), score
