"""The sweep's figures (PNG), drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend).

(a) NC2 equiangularity of the class means vs OoD AUROC over every logged evaluation of every run, coloured by
    epoch range, Pearson r in the title (seed paper Fig. 2);
(b) NC metrics vs epoch per condition: mean over seeds with a min-max band (drawn after the seed paper's Fig. 3,
    which plots them for the NC intervention's two groups);
(c) per-seed AUROC per condition (strip plot): the worst seed is the lower bound the papers stress.
Inputs are the runs frame and the long metric-history frame of ncood.aggregate.runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy import stats as sps

from ncood import keys

CURVE_METRICS = ("nc1", "nc2_equiangular_means", "nc2_equinorm_means", "nc3_self_duality")  # panels of (b)
LABELS = {
    "nc1": "NC1  Tr(Σ_W Σ_B⁺)/C", "nc2_equinorm_means": "NC2 equinorm (means)",
    "nc2_equinorm_classifier": "NC2 equinorm (classifier)", "nc2_equiangular_means": "NC2 equiangularity (means)",
    "nc2_equiangular_classifier": "NC2 equiangularity (classifier)", "nc2_etf_distance": "NC2 distance to simplex ETF",
    "nc3_self_duality": "NC3 self-duality", "nc4_ncc_error": "NC4 nearest-class-mean error",
    "nc4_ncc_mismatch": "NC4 nearest-class-mean mismatch",
}
DPI = 130


def _new(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _use_log(values: np.ndarray) -> bool:
    """Log scale where it helps: all positive and spanning more than a factor 20."""
    v = values[np.isfinite(values)]
    return v.size > 1 and (v > 0).all() and v.max() / v.min() > 20


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def epoch_ranges(steps: np.ndarray, max_ranges: int = 5) -> list[tuple[int, int]]:
    """Contiguous epoch ranges [(first, last)] covering the logged steps: one per epoch when there are few."""
    uniq = np.unique(steps.astype(int))
    if uniq.size <= max_ranges:
        return [(int(s), int(s)) for s in uniq]
    edges = np.linspace(uniq.min(), uniq.max() + 1, max_ranges + 1).round().astype(int)
    return [(int(a), int(b) - 1) for a, b in zip(edges[:-1], edges[1:]) if b > a]


# ---- (a) NC2 equiangularity vs AUROC ---------------------------------------------------------------------------------
def nc_vs_auroc(history: pd.DataFrame, used: pd.DataFrame, ood_set: str, path: Path, score: str = "gmm",
                nc_metric: str = "nc2_equiangular_means") -> tuple[Path, float, int]:
    """Scatter of one NC metric vs AUROC at every evaluated epoch of every used run. Returns (path, Pearson r, n)."""
    xk, yk = keys.nc_key(nc_metric), keys.ood_key(ood_set, score, "auroc")
    h = history[history["key"].isin([xk, yk]) & history["run_id"].isin(used["run_id"])]
    pts = h.pivot_table(index=["run_id", "step"], columns="key", values="value").reset_index()
    pts = pts.dropna(subset=[c for c in (xk, yk) if c in pts.columns]) if {xk, yk} <= set(pts.columns) else pts.iloc[:0]
    fig = _new(7.2, 5.2)
    ax = fig.add_subplot()
    r = np.nan
    if len(pts) >= 3 and pts[xk].std() > 0 and pts[yk].std() > 0:
        r = float(sps.pearsonr(pts[xk], pts[yk]).statistic)
    if len(pts):
        l2 = pts["run_id"].map(used.set_index("run_id")["l2"]).fillna(False).astype(bool)
        ranges = epoch_ranges(pts["step"].to_numpy())
        colours = [colormaps["viridis"](i / max(1, len(ranges) - 1)) for i in range(len(ranges))]  # one per range
        for (lo, hi), c in zip(ranges, colours):
            in_range = (pts["step"] >= lo) & (pts["step"] <= hi)
            for flag, marker in ((False, "o"), (True, "^")):
                sel = in_range & (l2 == flag)
                if sel.any():
                    ax.scatter(pts.loc[sel, xk], pts.loc[sel, yk], color=c, marker=marker, s=28, alpha=0.8,
                               edgecolors="white", linewidths=0.4)
        handles = [Line2D([], [], ls="", marker="s", color=c, label=f"epoch {lo}" if lo == hi else f"epochs {lo}-{hi}")
                   for (lo, hi), c in zip(ranges, colours)]
        handles += [Line2D([], [], ls="", marker=m, color="0.3", label=lab) for m, lab in (("o", "no L2"), ("^", "L2"))
                    if (l2 == (lab == "L2")).any()]
        ax.legend(handles=handles, fontsize=8, loc="best", title="evaluation", title_fontsize=8)
        if _use_log(pts[xk].to_numpy()):
            ax.set_xscale("log")
    else:
        _empty(ax, f"no epoch has both {xk} and {yk}")
    runs = pts["run_id"].nunique() if len(pts) else 0
    ax.set_xlabel(f"{LABELS.get(nc_metric, nc_metric)}  ({xk}, lower = more collapse)")
    ax.set_ylabel(f"{score.upper()} AUROC, ID vs {ood_set}")
    rtxt = f"Pearson r = {r:.3f}" if np.isfinite(r) else "Pearson r: n/a"
    ax.set_title(f"{LABELS.get(nc_metric, nc_metric)} vs {score.upper()} AUROC ({ood_set})\n"
                 f"{rtxt}  ({len(pts)} evaluations of {runs} runs)", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path), r, len(pts)


# ---- (b) NC metrics vs epoch -----------------------------------------------------------------------------------------
def nc_curves(history: pd.DataFrame, used: pd.DataFrame, conditions: Sequence[str], path: Path,
              metrics: Sequence[str] = CURVE_METRICS) -> Path:
    """One panel per NC metric: per condition the mean over seeds at each evaluated epoch, band = min..max."""
    cols = 2 if len(metrics) > 1 else 1
    rows = int(np.ceil(len(metrics) / cols))
    fig = _new(5.4 * cols, 3.6 * rows + 0.6)
    h = history[history["run_id"].isin(used["run_id"])]
    cond_of = used.set_index("run_id")["condition"]
    palette = colormaps["tab10"]
    shown = [c for c in conditions if c in set(cond_of)]
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        hm = h[h["key"] == keys.nc_key(m)]
        if hm.empty:
            _empty(ax, f"{keys.nc_key(m)} not logged")
        for j, cond in enumerate(shown):
            hc = hm[hm["run_id"].map(cond_of) == cond]
            if hc.empty:
                continue
            g = hc.groupby("step")["value"].agg(["mean", "min", "max", "count"])
            colour = palette(j % 10)
            ax.plot(g.index, g["mean"], color=colour, marker="o", ms=3, lw=1.5,
                    label=f"{cond} (n={hc['run_id'].nunique()})")
            ax.fill_between(g.index, g["min"], g["max"], color=colour, alpha=0.18, lw=0)
        if not hm.empty and _use_log(hm["value"].to_numpy()):
            ax.set_yscale("log")
        ax.set_title(f"{LABELS.get(m, m)}", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(keys.nc_key(m))
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in fig.axes:
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            if lb not in labels:
                handles.append(hd)
                labels.append(lb)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=8)
    fig.suptitle("Neural Collapse vs epoch (train-set features): mean over seeds, band = min-max", fontsize=11)
    return _save(fig, path)


# ---- (c) per-seed AUROC ----------------------------------------------------------------------------------------------
def auroc_strip(used: pd.DataFrame, conditions: Sequence[str], ood_sets: Sequence[str], path: Path,
                score: str = "gmm") -> Path:
    """One panel per OoD set: each seed's final AUROC per condition (jittered dots), mean (bar), worst seed marked."""
    ncols = min(max(1, len(ood_sets)), 3)
    nrows = int(np.ceil(max(1, len(ood_sets)) / ncols))
    fig = _new(ncols * max(3.8, 0.8 * len(conditions) + 1.6), 4.6 * nrows + 0.4)
    rng = np.random.default_rng(0)  # jitter only: the figure is the same on every run
    for i, ood in enumerate(ood_sets or [None]):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        key = keys.ood_key(ood, score, "auroc") if ood else None
        if key is None or key not in used.columns:
            _empty(ax, f"{key or 'no OoD set'} not logged")
            continue
        for x, cond in enumerate(conditions):
            g = used[(used["condition"] == cond)].dropna(subset=[key])
            if g.empty:
                continue
            v = g[key].to_numpy(float)
            xs = x + rng.uniform(-0.15, 0.15, v.size)
            ax.scatter(xs, v, s=22, color="tab:blue", alpha=0.75, edgecolors="white", linewidths=0.4, zorder=3)
            ax.hlines(v.mean(), x - 0.3, x + 0.3, color="black", lw=2, zorder=4)
            w = int(np.argmin(v))
            ax.annotate(f"s{int(g['seed'].iloc[w])}", (xs[w], v[w]), xytext=(6, -3), textcoords="offset points",
                        fontsize=7, color="tab:red")
        counts = [int(used.loc[used["condition"] == c, key].notna().sum()) for c in conditions]
        ax.set_xticks(range(len(conditions)), [f"{c} (n={n})" for c, n in zip(conditions, counts)], rotation=30,
                      ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(conditions) - 0.4)
        ax.set_ylabel(f"{score.upper()} AUROC (final epoch)")
        ax.set_title(f"ID vs {ood}", fontsize=10)  # short: a long title overran the last panel's edge
        ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color="tab:blue", label="seed"),
               Line2D([], [], color="black", lw=2, label="mean"),
               Line2D([], [], ls="", marker="$s$", color="tab:red", label="worst seed")]
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=3)
    fig.suptitle(f"Per-seed {score.upper()} AUROC per condition: one dot per seed", fontsize=11)
    return _save(fig, path)
