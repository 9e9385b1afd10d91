"""BatchNorm of the papers' multi-GPU runs (ncood.models.batch_norm) and the training precision switch (ncood.train).

The reference for split BatchNorm is what nn.DataParallel does with n GPUs, written out on one device: the batch is
cut with torch.chunk, each piece goes through its own replica (a copy of the network), and only the first replica's
buffers survive (the seed paper's "four NVIDIA V100 GPUs" under DDU's nn.DataParallel, if each run used all four:
`--bn-groups 4`)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ncood.config import ConfigError, make_config
from ncood.models import SplitBatchNorm2d, create_model, split_batch_norm
from ncood.pipeline import build_trial


def _net(**kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=10, in_channels=1, input_size=16, width=4, **kw)  # 2x2 last maps: a chunk of one image still has 4 values per channel


def _batch(n: int) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("n,groups", [(16, 4), (10, 4), (2, 4), (9, 2)])
def test_split_network_is_data_parallel_on_one_device(n, groups):
    """Outputs: each chunk as its own replica computes it; running stats: the first replica's; gradients: those of
    the loss over the whole batch. Uneven batches (10 into 4: 3, 3, 3, 1) and fewer samples than groups too."""
    # float64: a one-image chunk normalizes 4 values per channel in the last stage, which amplifies fp32 rounding
    # of the differently batched convs to ~1e-4 in the gradients; in float64 the two must agree to rounding.
    plain = _net(spectral_norm=False, leaky_gap=True).double()
    replicas = [copy.deepcopy(plain).train() for _ in range(groups)]
    split = split_batch_norm(copy.deepcopy(plain), groups).train()
    x = _batch(n).double()
    logits, z = split(x)
    chunks = x.chunk(groups)
    want = [r(c) for r, c in zip(replicas, chunks)]
    torch.testing.assert_close(logits, torch.cat([w[0] for w in want]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z, torch.cat([w[1] for w in want]), rtol=1e-10, atol=1e-12)
    ref_buffers = dict(replicas[0].named_buffers())
    for name, buf in split.named_buffers():
        torch.testing.assert_close(buf, ref_buffers[name], rtol=1e-10, atol=1e-12)
    # the loss over the gathered outputs: the gradient sums over the replicas
    logits.square().mean().backward()
    torch.cat([w[0] for w in want]).square().mean().backward()
    used = replicas[:len(chunks)]  # a batch smaller than the groups leaves replicas idle, as it leaves GPUs idle
    for (name, p), *rs in zip(split.named_parameters(), *(r.parameters() for r in used)):
        torch.testing.assert_close(p.grad, sum(r.grad for r in rs), rtol=1e-8, atol=1e-10)
    if n >= 2 * groups:  # the test can tell split statistics from whole-batch ones
        assert not torch.allclose(logits, copy.deepcopy(plain).train()(x)[0], atol=1e-4)


def test_split_batch_norm_keeps_state_and_eval_and_one_group_is_the_plain_network():
    plain = _net(spectral_norm=True, leaky_gap=True)
    state = copy.deepcopy(plain.state_dict())
    assert split_batch_norm(plain, 1) is plain and not any(isinstance(m, SplitBatchNorm2d) for m in plain.modules())
    split = split_batch_norm(copy.deepcopy(plain), 4)
    bns = [m for m in split.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(type(m) is SplitBatchNorm2d and m.groups == 4 for m in bns)
    assert list(split.state_dict()) == list(state)  # checkpoints and served packages load into plain networks
    fresh = _net(spectral_norm=True, leaky_gap=True)
    fresh.load_state_dict(split.state_dict())
    x = _batch(8)
    with torch.no_grad():
        torch.testing.assert_close(split.eval()(x)[0], plain.eval()(x)[0], rtol=0, atol=0)  # eval: running stats
    with pytest.raises(ValueError, match="groups must be >= 1"):
        split_batch_norm(plain, 0)


def test_trials_build_the_configured_batch_norm(tmp_path):
    base = dict(width=4, epochs=1, eval_every=0, device="cpu", data_root=str(tmp_path / "data"))
    assert make_config("cifar10").bn_groups == 1 and make_config("digits").bn_groups == 1  # opt-in: not stated
    split = build_trial(make_config("digits", bn_groups=4, **base), progress=False)
    assert sum(isinstance(m, SplitBatchNorm2d) for m in split.trainer.model.modules()) > 0
    plain = build_trial(make_config("digits", **base), progress=False)
    assert not any(isinstance(m, SplitBatchNorm2d) for m in plain.trainer.model.modules())
    with pytest.raises(ConfigError, match="bn_groups=0: must be >= 1"):
        make_config("digits", bn_groups=0)
    for arch in ("convnext_tiny", "cct_7_3x1"):  # LayerNorm networks: nothing to split, refused (not ignored)
        with pytest.raises(ConfigError, match=f"bn_groups=4: architecture '{arch}' has no BatchNorm"):
            make_config("digits", arch=arch, bn_groups=4)
    with pytest.raises(ValueError, match="no nn.BatchNorm2d"):
        split_batch_norm(nn.Sequential(nn.Linear(2, 2)), 4)


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_precision(tmp_path, precision, dtype):
    """fp32 (the papers) convolves in float32; bf16 under autocast (here CPU autocast) in bfloat16."""
    cfg = make_config("digits", width=4, epochs=1, eval_every=0, device="cpu", data_root=str(tmp_path / "data"),
                      precision=precision)
    trial = build_trial(cfg, progress=False)
    seen = set()
    conv = next(m for m in trial.trainer.model.modules() if isinstance(m, nn.Conv2d))
    handle = conv.register_forward_hook(lambda m, i, out: seen.add(out.dtype) if m.training else None)
    trial.trainer.fit()
    handle.remove()
    assert seen == {dtype}
    assert all(p.dtype == torch.float32 for p in trial.trainer.model.parameters())  # master weights stay fp32
    with pytest.raises(ConfigError, match="precision='fp16'"):
        make_config("digits", precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp32_training_on_cuda_uses_no_tf32(tmp_path):
    """The papers' V100s have no TF32; cuDNN uses it for fp32 convolutions by default. Inside a fp32 epoch it is off,
    and the global settings are restored afterwards."""
    before = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    cfg = make_config("digits", width=4, epochs=1, eval_every=0, device="cuda", data_root=str(tmp_path / "data"))
    trial = build_trial(cfg, progress=False)
    seen = set()
    conv = next(m for m in trial.trainer.model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, out: seen.add(torch.backends.cudnn.conv.fp32_precision) if m.training
                               else None)
    trial.trainer.fit()
    assert seen == {"ieee"}
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before
