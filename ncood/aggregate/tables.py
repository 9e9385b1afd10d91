"""The result tables of a sweep, as pure pandas functions of the runs frame (ncood.aggregate.runs.SweepData.runs).

Every value is the run's final-epoch value; a run lacking a metric is left out of that cell only (its `n` shows it).
Layouts follow the seed paper (early NC with L2 feature normalization): Table 1 (AUROC / accuracy min, max, mean per
condition), Table 2 (spectral norm x leaky/GAP x L2), Table 3 (NC metrics mean and SD). Formatting: 3 decimals as
there, `mean ± sd` with the sample SD (ddof=1; the papers do not say which SD they report). Each function returns a `Table`: a numeric frame (the CSV, full precision)
and a display frame (Markdown / LaTeX / HTML).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ncood import keys
from ncood.aggregate.runs import CONDITION_FIELDS, DUPLICATE, FAILED, INCOMPLETE, USED

GMM = "gmm"  # the score of the ablation and L2 tables: the DDU density the seed paper reports
AUROC, FPR95 = "auroc", "fpr95"
DASH = "–"


@dataclass
class Table:
    name: str  # file stem and MLflow artifact name
    title: str
    numeric: pd.DataFrame  # CSV: one column per number, full precision
    display: pd.DataFrame  # Markdown / LaTeX / HTML: the papers' formatting
    notes: list[str] = field(default_factory=list)  # printed under the table


# ---- numbers and their formatting ------------------------------------------------------------------------------------
def describe(values: Iterable[float]) -> dict[str, float]:
    """n, min, max, mean and sample SD (ddof=1; NaN for n < 2) of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"n": 0, "min": np.nan, "max": np.nan, "mean": np.nan, "sd": np.nan}
    return {"n": int(v.size), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else np.nan}


def fmt(x: float, digits: int = 3) -> str:
    """3 decimals as the papers; very small magnitudes (NC metrics near collapse) in scientific notation."""
    if x is None or not np.isfinite(x):
        return DASH
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def mean_sd(mean: float, sd: float) -> str:
    if mean is None or not np.isfinite(mean):
        return DASH
    return f"{fmt(mean)} ± {fmt(sd)}"


def _values(df: pd.DataFrame, key: str) -> np.ndarray:
    return df[key].to_numpy(dtype=float) if key in df.columns else np.array([], dtype=float)


# ---- seeds found vs expected -----------------------------------------------------------------------------------------
def _seed_list(seeds: Iterable) -> str:
    return ", ".join(f"s{int(s)}" for s in sorted(seeds)) or ""


def _seeds(group: pd.DataFrame, use: str | None = None) -> set[int]:
    """Seeds of the runs in `group` (those with `use`, if given)."""
    if not len(group):
        return set()
    rows = group if use is None else group[group["use"] == use]
    return set(rows["seed"].dropna().astype(int))


def seed_table(runs: pd.DataFrame, conditions: Sequence[str], expected_seeds: Sequence[int]) -> Table:
    """Per condition: seeds expected / used, and which seeds failed, stopped before the last epoch (killed, still
    running, stopped early), never ran, or ran twice (the latest complete run is used)."""
    rows, expected = [], len(expected_seeds)
    for cond in conditions:
        group = runs[runs["condition"] == cond] if len(runs) else runs
        used = _seeds(group, USED)
        failed, incomplete = _seeds(group, FAILED), _seeds(group, INCOMPLETE)
        # a seed whose failed or cut-off run was re-run to the end counts as used (listed under re-run), not failed
        by_kind = {"failed": failed - used, "incomplete": incomplete - used - failed,
                   "missing": set(expected_seeds) - _seeds(group),
                   "duplicate": (_seeds(group, DUPLICATE) | failed | incomplete) & used}
        failed_runs = group[(group["use"] == FAILED) & ~group["seed"].isin(used)] if len(group) else group
        errors = "; ".join(f"s{int(r.seed)}: {r.error}" for r in failed_runs.itertuples() if r.error)
        parts = [f"{k} {_seed_list(v)}" for k, v in by_kind.items() if v and k != "duplicate"]
        warn = "; ".join(parts)
        if len(used) < expected:
            warn = f"only {len(used)} of {expected} seeds" + (f": {warn}" if warn else "")
        rows.append({"condition": cond, "expected": expected, "used": len(used), "used_seeds": _seed_list(used),
                     **{k: _seed_list(v) for k, v in by_kind.items()}, "errors": errors, "warning": warn})
    numeric = pd.DataFrame(rows, columns=["condition", "expected", "used", "used_seeds", "failed", "incomplete",
                                          "missing", "duplicate", "errors", "warning"])
    display = numeric.drop(columns=["used_seeds"]).rename(columns={"used": "n used", "duplicate": "re-run"})
    display["errors"] = display["errors"].str.slice(0, 120)
    notes = [f"WARNING {c}: {w}" for c, w in zip(numeric["condition"], numeric["warning"]) if w]
    notes += [] if rows else ["WARNING: this sweep has no trial runs and lists no conditions"]
    return Table("seeds", "Seeds per condition (expected vs used; failed, incomplete and missing seeds)",
                 numeric, display, notes)


def seed_reasons(seeds: Table) -> dict[str, str]:
    """{condition: 'failed s1; missing s2'} from the seed table: why a condition has fewer seeds than expected."""
    cols = ("failed", "incomplete", "missing")
    return {r["condition"]: "; ".join(f"{c} {r[c]}" for c in cols if r[c]) for _, r in seeds.numeric.iterrows()}


def _warning(n: int, expected: int, used: int, reason: str = "") -> str:
    """'' when the cell has every expected seed; else says whether seeds (and which) or the metric were missing."""
    if n >= expected:
        return ""
    parts = [f"n={n} of {expected} seeds"]
    if used < expected and reason:
        parts.append(reason)
    if n < used:
        parts.append(f"metric missing in {used - n} finished run(s)")
    return "; ".join(parts)


# ---- Table 1: condition x OoD set x score ----------------------------------------------------------------------------
def ood_table(used: pd.DataFrame, conditions: Sequence[str], ood_sets: Sequence[str], scores: Sequence[str],
              expected: int, reasons: Mapping[str, str] | None = None) -> Table:
    """Per condition x OoD set x score: AUROC and FPR95 min / max / mean ± sd, and test accuracy the same way."""
    rows, disp = [], []
    for cond in conditions:
        g = used[used["condition"] == cond]
        acc = describe(_values(g, keys.ACC_TEST))
        for ood in ood_sets:
            for score in scores:
                au = describe(_values(g, keys.ood_key(ood, score, AUROC)))
                fp = describe(_values(g, keys.ood_key(ood, score, FPR95)))
                n = min(au["n"], fp["n"], acc["n"])
                warn = _warning(n, expected, len(g), (reasons or {}).get(cond, ""))
                row = {"condition": cond, "ood_set": ood, "score": score}
                for name, s in (("auroc", au), ("fpr95", fp), ("accuracy", acc)):
                    row.update({f"{name}_{k}": v for k, v in s.items()})
                rows.append({**row, "expected": expected, "warning": warn})
                ns = {au["n"], fp["n"], acc["n"]}
                disp.append({
                    "condition": cond, "OoD set": ood, "score": score,
                    "n": f"{n}/{expected}" if len(ns) == 1 else
                         f"AUROC {au['n']}, FPR95 {fp['n']}, acc {acc['n']} /{expected}",
                    "AUROC min": fmt(au["min"]), "AUROC max": fmt(au["max"]),
                    "AUROC mean ± sd": mean_sd(au["mean"], au["sd"]),
                    "FPR95 min": fmt(fp["min"]), "FPR95 max": fmt(fp["max"]),
                    "FPR95 mean ± sd": mean_sd(fp["mean"], fp["sd"]),
                    "acc min": fmt(acc["min"]), "acc max": fmt(acc["max"]),
                    "acc mean ± sd": mean_sd(acc["mean"], acc["sd"]), "warning": warn})
    return Table("table1_ood", "OoD detection and test accuracy per condition, OoD set and score (final epoch; "
                 "FPR95: OoD accepted at 95% ID accepted)", pd.DataFrame(rows), pd.DataFrame(disp))


# ---- Table 2: the ablation view --------------------------------------------------------------------------------------
def _axes_of(runs: pd.DataFrame, cond: str) -> dict:
    g = runs[runs["condition"] == cond]
    return {f: (g[f].iloc[0] if len(g) else None) for f in CONDITION_FIELDS}


_TABLE2_AXES = ("spectral_norm", "leaky_gap", "l2")  # the seed paper's Table 2 columns, in its order


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _sort_key(v) -> tuple:
    """Missing last; numbers (and booleans: off before on) by value, before text, which sorts alphabetically."""
    if _missing(v):
        return (1, 0, 0.0, "")
    number = isinstance(v, (bool, int, float, np.number))
    return (0, 0, float(v), "") if number else (0, 1, 0.0, str(v))


def _yes_no(v) -> str:
    return DASH if v is None or (isinstance(v, float) and np.isnan(v)) else ("yes" if bool(v) else "no")


def ablation_table(runs: pd.DataFrame, used: pd.DataFrame, conditions: Sequence[str], ood_sets: Sequence[str],
                   expected: int, reasons: Mapping[str, str] | None = None, score: str = GMM) -> Table:
    """Rows = spectral norm x leaky/GAP x L2 (after any other condition field that varies: arch, width, epochs,
    loss, optimizer ...); columns = the GMM AUROC on every OoD set and test accuracy, min / max / mean (seed paper
    Table 2)."""
    axes = {c: _axes_of(runs, c) for c in conditions}
    varying = [f for f in CONDITION_FIELDS if f not in _TABLE2_AXES  # any other axis the sweep varies
               and len({repr(a[f]) for a in axes.values() if not _missing(a[f])}) > 1]
    order = sorted(conditions, key=lambda c: tuple(_sort_key(axes[c][f]) for f in (*varying, *_TABLE2_AXES)))
    rows, disp = [], []
    for cond in order:
        g = used[used["condition"] == cond]
        a = axes[cond]
        row = {"condition": cond, **{f: a[f] for f in (*varying, "spectral_norm", "leaky_gap", "l2")}}
        d = {"condition": cond, **{f: a[f] for f in varying}, "SN": _yes_no(a["spectral_norm"]),
             "leaky/GAP": _yes_no(a["leaky_gap"]), "L2": _yes_no(a["l2"])}
        cells = [(f"auroc_{ood}", f"AUROC {ood}", keys.ood_key(ood, score, AUROC)) for ood in ood_sets]
        n_min, n_max = expected, 0
        for col, label, key in [*cells, ("accuracy", "acc", keys.ACC_TEST)]:
            s = describe(_values(g, key))
            row.update({f"{col}_{k}": s[k] for k in ("n", "min", "max", "mean")})
            d.update({f"{label} min": fmt(s["min"]), f"{label} max": fmt(s["max"]), f"{label} mean": fmt(s["mean"])})
            n_min, n_max = min(n_min, s["n"]), max(n_max, s["n"])
        d["n"] = f"{n_min}/{expected}" if n_min == n_max else f"{n_min}-{n_max}/{expected}"
        row["warning"] = d["warning"] = _warning(n_min, expected, len(g), (reasons or {}).get(cond, ""))
        rows.append(row)
        disp.append(d)
    title = (f"Ablation: spectral norm x leaky/GAP x L2, {score.upper()} AUROC on each OoD set "
             f"({', '.join(ood_sets)}) and test accuracy, min / max / mean over seeds (final epoch)")
    notes = [f"AUROC: the {score.upper()} score on every OoD set ({', '.join(ood_sets)}), not only the first."]
    return Table("table2_ablation", title, pd.DataFrame(rows), pd.DataFrame(disp), notes if ood_sets else [])


# ---- Table 3: Neural Collapse ----------------------------------------------------------------------------------------
def nc_table(used: pd.DataFrame, conditions: Sequence[str], expected: int, reasons: Mapping[str, str] | None = None,
             metrics: Sequence[str] = keys.NC_TABLE_ORDER) -> Table:
    """NC metrics (train-set features, final epoch) per condition: mean ± sd over seeds; the seed paper's Table 3
    columns in its order, then the metrics it does not report (keys.NC_TABLE_ORDER)."""
    rows, disp = [], []
    for cond in conditions:
        g = used[used["condition"] == cond]
        row, d, ns = {"condition": cond}, {"condition": cond}, []
        for m in metrics:
            s = describe(_values(g, keys.nc_key(m)))
            row.update({f"{m}_n": s["n"], f"{m}_mean": s["mean"], f"{m}_sd": s["sd"]})
            d[m] = mean_sd(s["mean"], s["sd"])
            ns.append(s["n"])
        n = min(ns) if ns else 0
        d["n"] = f"{n}/{expected}" if len(set(ns)) <= 1 else f"{min(ns)}-{max(ns)}/{expected}"
        row["warning"] = d["warning"] = _warning(n, expected, len(g), (reasons or {}).get(cond, ""))
        rows.append(row)
        disp.append(d)
    return Table("table3_nc", "Neural Collapse metrics per condition (train features, final epoch), mean ± sd",
                 pd.DataFrame(rows), pd.DataFrame(disp))


# ---- Table 4: L2 on vs its L2-off twin -------------------------------------------------------------------------------
def bootstrap_diff_ci(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b), resampling each group independently with replacement.

    Independent, not paired by seed: the seed fixes initialisation and batch order, but L2 changes the whole
    training trajectory, so seed s with L2 and seed s without L2 share no measurable common factor (pairing them
    would claim a correlation that is not there and cost degrees of freedom); it also keeps a condition with a
    failed seed usable (unequal n). This matches the Welch t-test beside it, which treats the groups as independent.
    A group of one seed gives no interval (NaN, as welch_p): resampling one value returns it every time, so that
    group would add no spread and the interval would understate the uncertainty (zero width with one seed each).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        return np.nan, np.nan
    rng = np.random.default_rng(seed)
    ma = a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)  # (resamples,)
    mb = b[rng.integers(0, b.size, size=(resamples, b.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(ma - mb, [alpha, 1 - alpha])
    return float(lo), float(hi)


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value (scipy.stats.ttest_ind, equal_var=False); NaN with fewer than 2 per group."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        return np.nan
    return float(sps.ttest_ind(a, b, equal_var=False).pvalue)


def l2_twins(runs: pd.DataFrame, conditions: Sequence[str]) -> list[tuple[str, str]]:
    """(L2 condition, its L2-off twin): every condition with L2 on whose other condition fields match one with L2
    off."""
    axes = {c: _axes_of(runs, c) for c in conditions}
    other = [f for f in CONDITION_FIELDS if f != "l2"]
    is_l2 = {c: None if a["l2"] is None else bool(a["l2"]) for c, a in axes.items()}  # None: no run to read it from
    pairs = []
    for c, a in axes.items():
        if is_l2[c] is True:
            twins = [t for t, b in axes.items() if is_l2[t] is False and all(b[f] == a[f] for f in other)]
            pairs += [(c, twins[0])] if twins else []
    return pairs


def l2_effect_table(runs: pd.DataFrame, used: pd.DataFrame, conditions: Sequence[str], ood_sets: Sequence[str],
                    score: str = GMM, resamples: int = 10_000, seed: int = 0) -> Table:
    """For each L2 condition vs its L2-off twin, per metric (GMM AUROC on each OoD set, test accuracy): difference
    in means (L2 - no L2) with a 95% bootstrap interval, Welch p-value, and the worst-seed gap
    (min over L2 seeds - min over no-L2 seeds: the lower bound the papers stress; higher is better for both)."""
    metrics = [(f"{score.upper()} AUROC {o}", keys.ood_key(o, score, AUROC)) for o in ood_sets]
    metrics.append(("test accuracy", keys.ACC_TEST))
    rows, disp = [], []
    for cond, twin in l2_twins(runs, conditions):
        for label, key in metrics:
            a = _values(used[used["condition"] == cond], key)
            b = _values(used[used["condition"] == twin], key)
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            lo, hi = bootstrap_diff_ci(a, b, resamples, seed)
            diff = a.mean() - b.mean() if a.size and b.size else np.nan
            gap = a.min() - b.min() if a.size and b.size else np.nan
            p = welch_p(a, b)
            row = {"condition": cond, "twin": twin, "metric": label, "key": key, "n_l2": a.size, "n_nol2": b.size,
                   "mean_l2": a.mean() if a.size else np.nan, "mean_nol2": b.mean() if b.size else np.nan,
                   "diff": diff, "ci_low": lo, "ci_high": hi, "p_welch": p,
                   "min_l2": a.min() if a.size else np.nan, "min_nol2": b.min() if b.size else np.nan,
                   "worst_seed_gap": gap}
            rows.append(row)
            disp.append({"L2 condition": cond, "no-L2 twin": twin, "metric": label, "n": f"{a.size} vs {b.size}",
                         "mean L2": fmt(row["mean_l2"]), "mean no L2": fmt(row["mean_nol2"]),
                         "diff": _signed(diff), "95% CI": f"[{_signed(lo)}, {_signed(hi)}]" if np.isfinite(lo) else DASH,
                         "Welch p": DASH if not np.isfinite(p) else f"{p:.3g}",
                         "min L2": fmt(row["min_l2"]), "min no L2": fmt(row["min_nol2"]),
                         "worst-seed gap": _signed(gap)})
    notes = [f"95% CI: percentile bootstrap of the difference in means, {resamples} resamples (seed {seed}), each "
             "group resampled independently (seeds are not paired across conditions); p: Welch t-test"]
    if not rows:
        notes.append("no L2 condition has an L2-off twin in this sweep (same other axes): nothing to compare")
    elif any(min(r["n_l2"], r["n_nol2"]) < 2 for r in rows):
        notes.append(f"{DASH} for the CI and p: a group with fewer than 2 seeds has no spread to measure; run more "
                     "seeds (--seeds)")
    columns = ["L2 condition", "no-L2 twin", "metric", "n", "mean L2", "mean no L2", "diff", "95% CI", "Welch p",
               "min L2", "min no L2", "worst-seed gap"]
    return Table("table4_l2_effect", f"L2 vs its L2-off twin: difference in means (L2 - no L2), 95% bootstrap CI, "
                 f"Welch p, worst-seed gap (min L2 - min no L2); {score.upper()} AUROC and test accuracy",
                 pd.DataFrame(rows), pd.DataFrame(disp, columns=columns), notes)


def _signed(x: float) -> str:
    return DASH if x is None or not np.isfinite(x) else f"{x:+.3f}"


def gmm_fit_notes(used: pd.DataFrame, conditions: Sequence[str]) -> list[str]:
    """One warning per condition whose final GMM fits needed jitter (gmm/jitter > 0: a singular class covariance,
    so the jitter shapes that condition's GMM scores), with the worst zero-variance dimension count."""
    notes = []
    for cond in conditions:
        g = used[used["condition"] == cond]
        jitter = _values(g, keys.GMM_JITTER)
        jitter = jitter[np.isfinite(jitter)]
        if not (jitter > 0).any():
            continue
        dims = _values(g, keys.GMM_DEGENERATE_DIMS)
        worst = f"; up to {int(np.nanmax(dims))} zero-variance feature dims in a class" if np.isfinite(dims).any() else ""
        notes.append(f"WARNING {cond}: {int((jitter > 0).sum())} of {jitter.size} final GMM fits needed jitter (up "
                     f"to {jitter.max():g}){worst}; their GMM scores depend on it")
    return notes


def all_tables(runs: pd.DataFrame, conditions: Sequence[str], expected_seeds: Sequence[int],
               ood_sets: Sequence[str], scores: Sequence[str], resamples: int = 10_000, seed: int = 0) -> list[Table]:
    """The seed report and Tables 1-4, in print order."""
    used = runs[runs["use"] == USED] if len(runs) else runs
    expected = len(expected_seeds)
    seeds = seed_table(runs, conditions, expected_seeds)
    why = seed_reasons(seeds)
    ood = ood_table(used, conditions, ood_sets, scores, expected, why)
    ood.notes += gmm_fit_notes(used, conditions)  # a degenerate GMM is shown, not trusted silently
    return [seeds, ood,
            ablation_table(runs, used, conditions, ood_sets, expected, why), nc_table(used, conditions, expected, why),
            l2_effect_table(runs, used, conditions, ood_sets, resamples=resamples, seed=seed)]
