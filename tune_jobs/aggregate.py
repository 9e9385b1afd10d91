"""Aggregate a sweep: tables and figures over seeds per condition, logged to an aggregate MLflow run.

    python tune_jobs/aggregate.py                                  # newest sweep of experiment ablation-default
    python tune_jobs/aggregate.py --experiment ablation-table1 --tracking-uri sqlite:////abs/mlruns/mlflow.db
    python tune_jobs/aggregate.py --parent-run <sweep run id> --out /tmp/agg

Writes <out>/tables/*.{md,csv,tex,html}, <out>/figures/*.png and <out>/report.md; see `--help`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

try:
    import ncood  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: the package sits next to tune_jobs/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ncood import aggregate  # noqa: E402  (MLflow, pandas, matplotlib load in run(), after parsing)
from ncood.tune import jobs  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """`ncood aggregate`'s flags, and --version as every job script has it."""
    parser = aggregate.build_parser(prog="aggregate.py")
    jobs.add_version(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return aggregate.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
