"""Serving: the MLflow pyfunc OoD scorer (scorer.py), packaging a finished trial as that model (package.py),
`ncood register` (register.py; its flags in cli.py) and `ncood serve` (server.py). Deployment notes and clients live
in deploy/serving/. The names below load their module on first use (PEP 562): `ncood register --help` and
`ncood serve --help` answer without importing torch or MLflow.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SCORER_NAME": "package", "ScorerParts": "package", "log_ood_scorer": "package", "write_scorer": "package",
    **{name: "scorer" for name in ("INPUT_COLUMN", "OUTPUT_COLUMNS", "InputError", "OODScorerModel", "Scorer",
                                   "ScorerSpec", "ServingLimits", "encode_png", "threshold_at_tpr")},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
