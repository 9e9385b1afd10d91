"""The measured numbers beside the papers' published ones (ncood.published), for every condition of a sweep that
ran a published condition (same data set, architecture, width, L2 / spectral norm / leaky-GAP, epochs, loss, batch
size, ...: `ncood.published.matches`).

Per matched (condition, published number): the published min / max / mean +- SD as the paper gives them, the
measured n / min / max / mean +- SD over the condition's used seeds (final epoch, ncood.aggregate.tables.describe),
and whether the published mean lies within the measured mean +- 1 SD ("yes" / "no"; "–" with fewer than 2 seeds).
Identical published numbers for one condition from several tables of a paper (TMLR's ResNet18 L2 60 feature-norm
AUROC is in its Tables 2, 3, 4 and 8) are one row that names all the tables. Matching reads every TrialConfig field
from the runs (ncood.aggregate.runs puts them in the runs frame), so a new config axis only needs rows in
ncood.published.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ncood.aggregate.tables import DASH, Table, describe, fmt, mean_sd
from ncood.config import TrialConfig
from ncood.published import PAPERS, PUBLISHED, PublishedResult, matches

__all__ = ["CONFIG_FIELDS", "comparison_summary", "published_table"]

CONFIG_FIELDS = tuple(f for f in TrialConfig.__dataclass_fields__ if f != "seed")  # what a published row can state
_SHORT = {"seed": "seed paper", "tmlr": "TMLR 2024"}


def _run_fields(runs: pd.DataFrame, condition: str) -> dict:
    """The config fields of one condition's runs (the first run: a condition fixes them), NaN read as absent."""
    g = runs[runs["condition"] == condition]
    if not len(g):
        return {}
    first = g.iloc[0]
    out = {}
    for f in CONFIG_FIELDS:
        if f in g.columns:
            v = first[f]
            out[f] = None if v is None or (isinstance(v, float) and np.isnan(v)) else v
    return out


def _merged(rows: Sequence[PublishedResult]) -> list[tuple[PublishedResult, list[str]]]:
    """Rows of one paper with the same mean for the same measurement, once, with every table that gives it, when
    their other numbers agree where both give one (seed paper Table 2 gives no SD, TMLR Table 3 alone gives min and
    max): the merged row keeps every number any of them gives."""
    out: list[tuple[PublishedResult, list[str]]] = []
    for r in rows:
        for i, (kept, tables) in enumerate(out):
            same = (kept.paper, kept.key, kept.mean) == (r.paper, r.key, r.mean)
            if same and all(getattr(kept, f) is None or getattr(r, f) is None or getattr(kept, f) == getattr(r, f)
                            for f in ("sd", "min", "max")):
                fill = {f: getattr(r, f) for f in ("sd", "min", "max", "seeds") if getattr(kept, f) is None}
                out[i] = (dataclasses.replace(kept, **fill), tables + [r.table])
                break
        else:
            out.append((r, [r.table]))
    return out


def _within(mean: float, sd: float, published: float) -> str:
    if not np.isfinite(mean) or not np.isfinite(sd):
        return DASH
    return "yes" if mean - sd <= published <= mean + sd else "no"


def _published_cell(r: PublishedResult) -> str:
    spread = "" if r.min is None else f"{fmt(r.min)} / {fmt(r.max)} / "
    return spread + (mean_sd(r.mean, r.sd) if r.sd is not None else fmt(r.mean))


def published_table(runs: pd.DataFrame, used: pd.DataFrame, conditions: Sequence[str], expected: int,
                    published: Sequence[PublishedResult] = PUBLISHED) -> Table:
    """The comparison table (empty when no condition of the sweep ran a published condition; its note says so)."""
    rows, disp = [], []
    for cond in conditions:
        fields = _run_fields(runs, cond)
        if not fields:
            continue
        g = used[used["condition"] == cond]
        for r, tables in _merged([p for p in published if matches(p, fields)]):
            values = g[r.key].to_numpy(dtype=float) if r.key in g.columns else np.array([], dtype=float)
            s = describe(values)
            within = _within(s["mean"], s["sd"], r.mean)
            measurement = " / ".join(x for x in (r.score, r.ood_set, r.metric) if x)
            rows.append({"condition": cond, "paper": PAPERS[r.paper], "tables": ", ".join(tables), "row": r.row,
                         "key": r.key, "published_min": r.min, "published_max": r.max, "published_mean": r.mean,
                         "published_sd": r.sd, "published_seeds": r.seeds, "n": s["n"], "expected": expected,
                         "min": s["min"], "max": s["max"], "mean": s["mean"], "sd": s["sd"],
                         "published_mean_within_1sd": within, "note": r.note})
            disp.append({"condition": cond, "source": f"{_SHORT[r.paper]} {', '.join(tables)}: {r.row}",
                         "measurement": measurement, "published min / max / mean ± sd": _published_cell(r),
                         "n": f"{s['n']}/{expected}", "measured min": fmt(s["min"]), "measured max": fmt(s["max"]),
                         "measured mean ± sd": mean_sd(s["mean"], s["sd"]), "published mean in ±1 sd": within})
    notes = [f"{_SHORT[k]}: \"{v}\"" for k, v in PAPERS.items()]
    notes.append("Matched on every condition field a paper states (dataset, arch, width, L2, spectral norm, "
                 "leaky/GAP, epochs, loss, batch size, lr, ...; ncood.published). 'published mean in ±1 sd': the "
                 "published mean lies within the measured mean ± 1 SD over this sweep's seeds.")
    notes += sorted({f"{r['key']}: {r['note']}" for r in rows if r["note"]})
    if not rows:
        notes.insert(0, "No condition of this sweep ran a published condition: nothing to compare "
                        "(e.g. the embedded digits grid is not in the papers).")
    return Table("published", "Published (the papers) vs measured: the same condition, final epoch",
                 pd.DataFrame(rows), pd.DataFrame(disp), notes)


def comparison_summary(table: Table | None) -> Mapping[str, int]:
    """Counts for the aggregate MLflow run's params: rows compared, and how many lie within 1 SD."""
    df = table.numeric if table is not None else pd.DataFrame()
    if not len(df):
        return {"published_compared": 0, "published_within_1sd": 0}
    return {"published_compared": int(len(df)),
            "published_within_1sd": int((df["published_mean_within_1sd"] == "yes").sum())}
