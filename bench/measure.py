"""Benchmark of the measurement step: ncood vs the usual implementations, same inputs, same process.

Two comparisons per feature dimension d (default 45,000 x 512 and 45,000 x 2048 float32 features, 10 classes):

  nc        ncood.collapse.nc_metrics (NC1 in the (C-1)-dim span of the class means, docs/method.md#nc1) vs the
            usual full formula: Sigma_W (d x d) from the class-centred features, Sigma_B = M M^T / C and
            nc1 = trace(Sigma_W @ pinv(Sigma_B)) / C (Zhu et al. 2021's `compute_info`; torch float64, pinv via
            eigh since Sigma_B is symmetric), NC2/NC3 from their definitions, NC4 with torch.cdist.
  gaussian  ncood.ood.fit_class_gaussians + log_density (batched Cholesky, one jitter ladder for all classes,
            classes skipped by an exact bound when they cannot matter to the logsumexp; --mean-scale 0 is
            its worst case, where none can be skipped)
            vs DDU's recipe class by class: mean and `centered_cov_torch` per class, the jitter ladder
            (0, 1e-12, ..., 1e-1) tried per class with torch.distributions.MultivariateNormal, then
            logsumexp over the per-class `log_prob` of the whole score set (float64 throughout).

The fit uses the N training features; the score set is `--score-n` further draws (default 10,000, the size of
the CIFAR-10 test set). The references are not slowed down: vectorized per class, float64 on the same device,
scoring the whole set in one call per class. Each comparison reports both times (median and best of
`--repeats`, interleaved), `speedup` = the median over repeats of reference time / ncood time, and the largest
relative difference of the results (elementwise |ncood - ref| / |ref|; every NC metric, every score).
On a shared CPU, `--threads 1` gives the steadiest ratios (no OpenMP barriers waiting on a preempted thread).

    python bench/measure.py                    # CPU, full sizes (several minutes on 2 cores)
    python bench/measure.py --device cuda --json
    python bench/measure.py --smoke --json     # tiny sizes (tests/test_bench.py)
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
from torch.distributions import MultivariateNormal

from _common import environment, print_json, side_by_side
from ncood.collapse import nc_metrics
from ncood.ood.gaussian import JITTERS, fit_class_gaussians


# ---- synthetic features -----------------------------------------------------------------------------------
def make_features(n: int, d: int, c: int, seed: int, device: torch.device,
                  mean_scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) float32 features with class structure and correlated, anisotropic, full-rank class covariances.

    mean_scale: spread of the class means (3: classes far apart, as for a trained network's ID features;
    0: every class centred at the origin, differing only in covariance, the worst case of the pruned GMM score).
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c  # balanced classes
    means = mean_scale * torch.randn(c, d, generator=g)  # (C, d)
    scale = 0.5 + torch.rand(c, d, generator=g)  # (C, d) per-class per-dimension spread
    mix = torch.randn(32, d, generator=g) / math.sqrt(32)  # (32, d) shared low-rank correlation
    x = means[y] + torch.randn(n, d, generator=g) * scale[y] + torch.randn(n, 32, generator=g) @ mix
    return x.to(device), y.to(device)


# ---- references ("the usual way") -------------------------------------------------------------------------
@torch.no_grad()
def nc_reference(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
    """NC metrics with the full d x d Sigma_W and the pseudo-inverse of Sigma_B, float64."""
    h, w = h.double(), w.double()
    c, (n, d) = w.shape[0], h.shape
    mu = torch.stack([h[y == k].mean(0) for k in range(c)])  # (C, d)
    sw = torch.zeros(d, d, dtype=torch.float64, device=h.device)
    for k in range(c):
        hk = h[y == k] - mu[k]
        sw += hk.T @ hk
    sw /= n
    m = (mu - mu.mean(0)).T  # (d, C)
    sb = m @ m.T / c
    nc1 = torch.trace(sw @ torch.linalg.pinv(sb, hermitian=True)) / c

    def equinorm(norms):
        return norms.std() / norms.mean()

    def equiangular(v):  # v (C, d) rows
        norms = v.norm(dim=1)
        cos = (v @ v.T) / torch.outer(norms, norms)
        off = ~torch.eye(c, dtype=torch.bool, device=v.device)
        return (cos + 1 / (c - 1))[off].abs().sum() / (c * (c - 1))

    mn = m / m.norm(dim=0)  # slides Eq. 14: unit-length centred means
    mtm = mn.T @ mn
    etf = (mtm / mtm.norm() - (torch.eye(c, dtype=torch.float64, device=h.device) - 1 / c) / math.sqrt(c - 1)).norm()
    out = {
        "nc1": nc1,
        "nc2_equinorm_means": equinorm(m.norm(dim=0)),
        "nc2_equinorm_classifier": equinorm(w.norm(dim=1)),
        "nc2_equiangular_means": equiangular(m.T),
        "nc2_equiangular_classifier": equiangular(w),
        "nc2_etf_distance": etf,
        "nc3_self_duality": (w.T / w.norm() - m / m.norm()).pow(2).sum(),
        "nc4_ncc_error": (torch.cdist(h, mu).argmin(1) != y).double().mean(),
        "nc4_ncc_mismatch": (torch.cdist(h, mu).argmin(1) != pred).double().mean(),
    }
    return {k: float(v) for k, v in out.items()}


@torch.no_grad()
def gaussian_reference(x: torch.Tensor, y: torch.Tensor, c: int, z: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """DDU's class Gaussians, one class at a time; returns (scores (M,) float64, the jitter each class needed)."""
    x, z = x.double(), z.double()
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    gaussians, jitters = [], []
    for k in range(c):
        xk = x[y == k]
        mu = xk.mean(0)
        xk = xk - mu
        cov = xk.T @ xk / (xk.shape[0] - 1)  # DDU's centered_cov_torch
        for eps in JITTERS:
            try:
                gaussians.append(MultivariateNormal(mu, covariance_matrix=cov + eps * eye))
            except (RuntimeError, ValueError):  # LinAlgError (a RuntimeError) or the PD constraint check
                continue
            jitters.append(eps)
            break
        else:
            raise RuntimeError(f"class {k}: no jitter makes the covariance positive definite")
    log_probs = torch.stack([g.log_prob(z) for g in gaussians], dim=1)  # (M, C)
    return torch.logsumexp(log_probs, dim=1), jitters


def ncood_gaussian(x: torch.Tensor, y: torch.Tensor, c: int, z: torch.Tensor) -> tuple[torch.Tensor, float]:
    fit = fit_class_gaussians(x, y, c)
    return fit.log_density(z), fit.jitter


def speedups(times: dict) -> dict:
    """speedup: median over repeats of reference time / ncood time (each pair ran back to back, so under the same
    machine load); speedup_best: best reference time / best ncood time."""
    pairs = [r / o for r, o in zip(times["reference"]["all_s"], times["ncood"]["all_s"])]
    return {"speedup": statistics.median(pairs), "speedup_best": times["reference"]["best_s"] / times["ncood"]["best_s"]}


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten().to(a.device)
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


# ---- the benchmark ----------------------------------------------------------------------------------------
def run(n: int, d: int, c: int, score_n: int, repeats: int, device: torch.device, seed: int,
        mean_scale: float = 3.0) -> dict:
    x, y = make_features(n + score_n, d, c, seed, device, mean_scale)
    x, z, y = x[:n], x[n:], y[:n]
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(c, d, generator=g).to(device)  # (C, d) a classifier
    pred = (x @ w.T).argmax(1)  # (N,) its predictions
    row = {"n": n, "d": d, "classes": c, "score_n": score_n, "mean_scale": mean_scale}

    times, res = side_by_side({"ncood": lambda: nc_metrics(x, y, w, predictions=pred),
                               "reference": lambda: nc_reference(x, y, w, pred)}, device, repeats)
    ours, ref = res["ncood"], res["reference"]
    rel = {k: abs(ours[k] - ref[k]) / max(abs(ref[k]), 1e-300) for k in ref}
    row["nc"] = {"time": times, **speedups(times),
                 "max_rel_diff": max(rel.values()), "rel_diff": rel, "values": {"ncood": ours, "reference": ref}}

    times, res = side_by_side({"ncood": lambda: ncood_gaussian(x, y, c, z),
                               "reference": lambda: gaussian_reference(x, y, c, z)}, device, repeats)
    (s_ours, jit_ours), (s_ref, jit_ref) = res["ncood"], res["reference"]
    row["gaussian"] = {"time": times, **speedups(times),
                       "max_rel_diff": max_rel_diff(s_ours, s_ref), "jitter_ncood": jit_ours,
                       "jitter_reference": jit_ref, "score_range": [float(s_ref.min()), float(s_ref.max())]}
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=45_000, help="training features per set (fit + NC)")
    p.add_argument("--dims", type=int, nargs="+", default=[512, 2048], help="feature dimensions")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--score-n", type=int, default=10_000, help="features scored by the fitted Gaussians")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each implementation (interleaved)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mean-scale", type=float, default=3.0,
                   help="spread of the synthetic class means (0: all classes at the origin, nothing for the GMM "
                        "score's class pruning to drop: its worst case)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for tests: n=600, dims 16 48, score-n 200")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.dims, args.score_n, args.repeats = 600, [16, 48], 200, 1
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"benchmark": "measure", "env": environment(device), "runs": []}
    print(f"# {out['env']}", flush=True)
    print(f"{'d':>5s} {'what':9s} {'ncood s':>9s} {'ref s':>9s} {'speedup':>8s} {'max rel diff':>13s}", flush=True)
    for d in args.dims:
        row = run(args.n, d, args.classes, args.score_n, args.repeats, device, args.seed, args.mean_scale)
        out["runs"].append(row)
        for what in ("nc", "gaussian"):
            r = row[what]
            t = r["time"]
            print(f"{d:5d} {what:9s} {t['ncood']['median_s']:9.3f} {t['reference']['median_s']:9.3f} "
                  f"{r['speedup']:8.2f} {r['max_rel_diff']:13.2e}", flush=True)
    if args.json:
        print_json(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
