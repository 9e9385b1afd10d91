"""Gaussian feature blobs for the OoD tests (tests/test_ood.py, tests/test_gaussian.py)."""
import torch


def blobs(n_per, d, c, seed=0, scale=5.0):
    """ID features: class c around scale * e_c (+ unit noise); labels 0..C-1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(c).repeat_interleave(n_per)
    centres = scale * torch.eye(c, d)
    return centres[y] + torch.randn(n_per * c, d, generator=g), y
