"""Tests for ncood.models: every registered model goes through the same checks (sweep over list_models()).

The DDU toggle tests (spectral norm, leaky/GAP) sweep the models that implement them (models_supporting); the
others must refuse them. Widths are 8 (tiny CPU variant) except the full-width shape check; the whole file runs
in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ncood.config import ConfigError, make_config
from ncood.models import (SNConv2d, create_model, freeze_spectral_norm, list_models, models_supporting,
                          spectral_norm_layers)
from ncood.train import make_optimizer

MODELS = list_models()
SN_MODELS, LEAKY_MODELS = models_supporting("spectral_norm"), models_supporting("leaky_gap")
# papers' feature sizes at width 64: DDU ResNets/VGG/WRN-28-10, ConvNeXt-Tiny's last stage, CCT-7's embedding
FULL_WIDTH_DIM = {"resnet18": 512, "resnet50": 2048, "vgg16": 512, "wide_resnet28_10": 640, "convnext_tiny": 768,
                  "cct_7_3x1": 256}
# parameter counts at width 64: WRN-28-10 36.5M (Zagoruyko & Komodakis 2016), CCT-7/3x1 3.76M (Hassani et al. 2021)
FULL_WIDTH_PARAMS = {"wide_resnet28_10": 36.5e6, "cct_7_3x1": 3.76e6}
SN_BUFFERS = {"sn_u", "sn_v", "sigma"}


def all_toggles(name: str) -> dict:
    """Every option `name` supports switched on: L2, and DDU's spectral norm and leaky/GAP where implemented."""
    return {"l2": True, "spectral_norm": name in SN_MODELS, "leaky_gap": name in LEAKY_MODELS}


def digits_model(name: str, **kw) -> nn.Module:
    """Width-8 model for (B, 1, 8, 8) inputs."""
    return create_model(name, num_classes=10, in_channels=1, input_size=8, width=8, **kw)


def digits_batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def shortcut_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for n, sc in model.named_modules() if n.endswith("shortcut") for m in sc.modules()
            if isinstance(m, nn.Conv2d)]


def operator_norm(weight: torch.Tensor, conv: nn.Conv2d, in_shape: tuple[int, int, int]) -> float:
    """Exact largest singular value of x -> conv2d(x, weight) on (1, *in_shape) inputs, in float64.

    Independent of the implementation: the operator's matrix is built by convolving the standard basis
    (no conv_transpose2d / output_padding involved), then its 2-norm is taken by SVD.
    """
    n = in_shape[0] * in_shape[1] * in_shape[2]
    basis = torch.eye(n, dtype=torch.float64).view(n, *in_shape)  # (n, C_in, H, W)
    matrix = F.conv2d(basis, weight.detach().double(), None, conv.stride, conv.padding).flatten(1)  # (n, m)
    return torch.linalg.matrix_norm(matrix, ord=2).item()


def record_conv_inputs(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, tuple[int, ...]]:
    """Actual (C, H, W) input shape of every Conv2d during one eval forward."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: shapes.__setitem__(mod, tuple(inp[0].shape[1:])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


def test_registry_has_the_paper_models():
    assert MODELS == sorted(MODELS)
    assert {"resnet18", "resnet50", "vgg16", "wide_resnet28_10", "convnext_tiny", "cct_7_3x1"} <= set(MODELS)
    assert set(SN_MODELS) == set(LEAKY_MODELS) == {"resnet18", "resnet50", "vgg16", "wide_resnet28_10"}


@pytest.mark.parametrize("name", MODELS)
def test_full_width_cifar_shapes(name):
    model = create_model(name, num_classes=10)  # width 64, 32x32 RGB
    logits, z = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert z.shape == (2, model.feature_dim)
    assert model.feature_dim == FULL_WIDTH_DIM[name]
    if name in FULL_WIDTH_PARAMS:
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(FULL_WIDTH_PARAMS[name], rel=0.01)
    assert model.classifier.in_features == model.feature_dim and model.classifier.out_features == 10


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("all_on", [False, True])
def test_digits_shapes_and_width_scaling(name, all_on):
    model = digits_model(name, **(all_toggles(name) if all_on else {}))
    logits, z = model(digits_batch(4))
    assert logits.shape == (4, 10) and z.shape == (4, model.feature_dim)
    assert model.feature_dim * 8 == create_model(name, num_classes=10, width=64).feature_dim  # d ~ width
    model.eval()  # dropout / drop path (WRN, ConvNeXt, CCT) make two train-mode passes differ
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(digits_batch(4))),
                                   model(digits_batch(4))[0])


@pytest.mark.parametrize("name", SN_MODELS)
@pytest.mark.parametrize("size", [8, 32])
def test_sn_shapes_match_actual_conv_inputs(name, size):
    """Spatial sizes propagated at construction equal the real ones (the SN operator is the right one)."""
    model = create_model(name, num_classes=10, in_channels=1, input_size=size, width=8, spectral_norm=True)
    shapes = record_conv_inputs(model, torch.randn(2, 1, size, size))
    assert len(shapes) == len(list(spectral_norm_layers(model))) > 0
    for conv in spectral_norm_layers(model):
        assert tuple(conv.sn_v.shape[1:]) == shapes[conv]


@pytest.mark.parametrize("name", LEAKY_MODELS)
def test_leaky_gap_structure(name):
    plain, leaky = digits_model(name), digits_model(name, leaky_gap=True)
    types = lambda m: {type(x) for x in m.modules()}  # noqa: E731
    assert nn.ReLU in types(plain) and nn.LeakyReLU not in types(plain)
    assert nn.LeakyReLU in types(leaky) and nn.ReLU not in types(leaky)
    assert all(m.negative_slope == 0.01 for m in leaky.modules() if isinstance(m, nn.LeakyReLU))
    assert shortcut_convs(leaky) == []  # no 1x1 shortcut conv anywhere
    if "resnet" in name:
        assert shortcut_convs(plain) and all(c.kernel_size == (1, 1) for c in shortcut_convs(plain))
    # leaky/GAP removes exactly the shortcut convs (ResNet50's bottleneck 1x1 convs stay in the main path)
    def n1x1(m: nn.Module) -> int:
        return sum(isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) for c in m.modules())

    assert n1x1(leaky) == n1x1(plain) - len(shortcut_convs(plain))
    if name in ("resnet18", "vgg16", "wide_resnet28_10"):
        assert n1x1(leaky) == 0


@pytest.mark.parametrize("name", SN_MODELS)
def test_spectral_norm_placement(name):
    model = digits_model(name, spectral_norm=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(c, SNConv2d) for c in convs)
    for c in convs:
        assert {n for n, _ in c.named_buffers(recurse=False)} == SN_BUFFERS
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.BatchNorm2d)):
            assert not SN_BUFFERS & {n for n, _ in m.named_buffers(recurse=False)}
    assert type(model.classifier) is nn.Linear and not list(model.classifier.buffers())
    assert "SNConv2d" in repr(model) and "coeff=3.0" in repr(model)
    plain = digits_model(name)
    assert not list(spectral_norm_layers(plain))
    assert not any(n.rsplit(".", 1)[-1] in SN_BUFFERS for n, _ in plain.named_buffers())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("l2", [False, True])
def test_l2_head(name, l2):
    model = digits_model(name, l2=l2).eval()
    seen = []
    model.classifier.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    with torch.no_grad():
        _, z = model(digits_batch(8) * 5)
    norms = seen[0].norm(dim=1)
    if l2:
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
        assert (z.norm(dim=1) - 1).abs().max() > 1e-3  # features are returned before normalization
    else:
        torch.testing.assert_close(seen[0], z)


def test_spectral_norm_bounds_the_conv_operator():
    """After training, every normalized conv's EFFECTIVE operator norm is <= coeff (1% slack)."""
    torch.manual_seed(0)
    coeff = 3.0
    model = digits_model("resnet18", spectral_norm=True, sn_coeff=coeff)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    in_shapes = record_conv_inputs(model, x)
    with torch.no_grad():  # init norms are ~1-2: scale up so the bound is active (not vacuous)
        for conv in spectral_norm_layers(model):
            conv.weight.mul_(5.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    # One power iteration per step converges slowly when the top singular values are close: with 30
    # steps a layer can still be 1-3% under-estimated, so run 150 (the bound itself is not loosened).
    for _ in range(150):
        loss = F.cross_entropy(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    n_active = 0
    for conv in spectral_norm_layers(model):
        shape = in_shapes[conv]
        with torch.no_grad():
            w_eff = conv.effective_weight()  # what the eval forward uses
            sigma_est = conv.estimate_sigma().item()
        raw = operator_norm(conv.weight, conv, shape)
        eff = operator_norm(w_eff, conv, shape)
        n_active += raw > coeff
        assert eff <= coeff * 1.01, (conv, raw, eff)
        assert abs(sigma_est - raw) <= 0.05 * raw  # raw-weight estimate
        assert abs(min(sigma_est, coeff) - eff) <= 0.05 * eff  # estimate of the effective weight's norm
    assert n_active >= 1


@pytest.mark.parametrize("name", SN_MODELS)
def test_sn_buffers_update_in_train_only(name):
    model = digits_model(name, spectral_norm=True)
    x = digits_batch(4)
    model.eval()
    with torch.no_grad():
        model(x)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model(x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.train()
    model(x)
    for conv in spectral_norm_layers(model):
        assert conv.sn_u.dtype == torch.float32 and torch.isfinite(conv.sigma)
    after = model.state_dict()
    assert any(k.endswith("sn_u") and not torch.equal(after[k], before[k]) for k in before)


def test_frozen_spectral_norm_serves_the_same_network_until_train(monkeypatch):
    """freeze_spectral_norm (the served scorer): every SN conv fixes its W_eff, autograd-free eval forwards use it and
    give the logits of the unfrozen network bit for bit; the fixed copy is not in the state_dict and follows .to();
    forwards with autograd on still differentiate W; train() unfreezes."""
    torch.manual_seed(0)
    model = digits_model("resnet18", spectral_norm=True).eval()
    with torch.no_grad():  # the bound is active in some layers (sigma > coeff), so W_eff differs from W
        for conv in spectral_norm_layers(model):
            conv.weight.mul_(5.0)
    x = digits_batch(4)
    with torch.no_grad():
        expected = model(x)[0]
    assert freeze_spectral_norm(model) is model
    convs = list(spectral_norm_layers(model))
    assert all(c.sn_frozen is not None for c in convs)
    assert not any(k.endswith("sn_frozen") for k in model.state_dict())
    calls = []
    for c in convs:  # a frozen eval forward does not recompute W_eff
        c.register_forward_pre_hook(lambda mod, inp: calls.append(mod.sn_frozen is not None))
    original = SNConv2d.effective_weight
    recomputed = []
    monkeypatch.setattr(SNConv2d, "effective_weight",
                        lambda self, update=False: recomputed.append(self) or original(self, update))
    with torch.inference_mode():
        torch.testing.assert_close(model(x)[0], expected, rtol=0, atol=0)
    assert not recomputed and all(calls)
    model(x)[0].sum().backward()  # eval mode, autograd on: W_eff recomputed, the gradient reaches every W
    assert len(recomputed) == len(convs)
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
    model.double()
    assert all(c.sn_frozen.dtype == torch.float64 for c in convs)
    model.train()
    assert all(c.sn_frozen is None for c in convs)


@pytest.mark.parametrize("name", SN_MODELS)
def test_create_model_from_a_saved_state_skips_the_warmup(name, monkeypatch):
    """create_model(state_dict=...) loads the state strictly and gives the same network, bit for bit, without the
    20-step spectral-norm warm-up per conv (the loaded u, v, sigma replace it); a state missing a key is refused."""
    torch.manual_seed(3)
    saved = digits_model(name, **all_toggles(name)).state_dict()
    steps = []
    original = SNConv2d.power_iteration
    monkeypatch.setattr(SNConv2d, "power_iteration", lambda self, n_iter=1: steps.append(n_iter) or original(self, n_iter))
    loaded = digits_model(name, **all_toggles(name), state_dict=saved).eval()
    assert steps and set(steps) == {0}
    assert loaded.state_dict().keys() == saved.keys()
    assert all(torch.equal(loaded.state_dict()[k], saved[k]) for k in saved)
    rebuilt = digits_model(name, **all_toggles(name)).eval()
    rebuilt.load_state_dict(saved)
    with torch.no_grad():
        torch.testing.assert_close(loaded(digits_batch())[0], rebuilt(digits_batch())[0], rtol=0, atol=0)
    partial = {k: v for k, v in saved.items() if not k.endswith("sn_u")}
    with pytest.raises(RuntimeError, match="sn_u"):
        digits_model(name, **all_toggles(name), state_dict=partial)


def test_sn_under_bf16_autocast_keeps_fp32_state():
    model = digits_model("resnet18", spectral_norm=True).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(digits_batch(4))
    logits.float().sum().backward()
    for conv in spectral_norm_layers(model):
        assert conv.sn_u.dtype == conv.sigma.dtype == torch.float32 and torch.isfinite(conv.sigma)
        assert conv.weight.grad is not None


@pytest.mark.parametrize("name", MODELS)
def test_determinism_and_checkpoint_roundtrip(name):
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(digits_model(name, **all_toggles(name)).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(7)
    other = digits_model(name, **all_toggles(name))
    other.load_state_dict(states[0])
    torch.manual_seed(123)
    ref = digits_model(name, **all_toggles(name))
    x = digits_batch(4)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x)[0], ref.eval()(x)[0])


def test_unknown_name_lists_registered_models():
    with pytest.raises(ValueError) as err:
        create_model("resnet1000", num_classes=10)
    assert all(name in str(err.value) for name in MODELS)


@pytest.mark.parametrize("bad", [{"width": 0}, {"width": -8}, {"width": 2.5}, {"sn_coeff": 0.0},
                                 {"sn_coeff": -1.0}, {"num_classes": 0}, {"input_size": 0}])
def test_bad_arguments_raise(bad):
    kw = {"num_classes": 10, "width": 8, "spectral_norm": True} | bad
    with pytest.raises(ValueError):
        create_model(MODELS[0], **kw)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_one_training_step_moves_every_parameter(name, optimizer):
    """One optimizer step (ncood.train.make_optimizer) at width 8 on a digits batch, every option the model has
    switched on: the loss is finite, every parameter gets a finite non-zero gradient and changes."""
    torch.manual_seed(0)
    model = digits_model(name, **all_toggles(name)).train()
    cfg = make_config("digits", arch=name, optimizer=optimizer, **all_toggles(name))
    opt = make_optimizer(model, cfg, fused=False)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    x, y = digits_batch(16), torch.arange(16) % 10
    loss = F.cross_entropy(model(x)[0], y)
    loss.backward()
    assert torch.isfinite(loss)
    for k, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, k
    opt.step()
    assert all(not torch.equal(p, before[k]) for k, p in model.named_parameters())


@pytest.mark.parametrize("name", sorted(set(MODELS) - set(SN_MODELS) | set(MODELS) - set(LEAKY_MODELS)))
@pytest.mark.parametrize("toggle", ["spectral_norm", "leaky_gap"])
def test_unsupported_ddu_toggles_are_refused(name, toggle):
    """ConvNeXt and CCT have no conv/BN/ReLU stack for DDU's toggles: refused by name, never silently ignored."""
    with pytest.raises(ValueError, match=f"{name}.*{toggle}"):
        digits_model(name, **{toggle: True})
    with pytest.raises(ConfigError, match=f"{toggle}: architecture '{name}'"):
        make_config("digits", arch=name, **{toggle: True})


def test_adamw_skips_weight_decay_on_biases_and_norms():
    model = digits_model("cct_7_3x1")
    cfg = make_config("digits", arch="cct_7_3x1", optimizer="adamw", weight_decay=0.06, lr=5.5e-4)
    opt = make_optimizer(model, cfg, fused=False)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert set(by_decay) == {0.0, 0.06} and opt.param_groups[0]["lr"] == 5.5e-4
    for n, p in model.named_parameters():
        assert (id(p) in by_decay[0.0]) == (p.ndim <= 1), n  # biases, LayerNorm weights: no decay
