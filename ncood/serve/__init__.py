"""Serving: request decoding (decoding.py), the OoD scorer (scorer.py), its MLflow pyfunc wrapper (pyfunc.py),
packaging a finished trial as that model (package.py), `ncood register` (register.py; its flags in cli.py) and
`ncood serve` (server.py; the checks it makes before starting: preflight.py). Deployment notes and clients live in
deploy/serving/. The names below load their module on first use (PEP 562): `ncood register --help` and `ncood serve
--help` answer without importing torch or MLflow.
"""
from __future__ import annotations

from ncood.lazy import lazy_getattr

_EXPORTS = {
    "SCORER_NAME": "package",  # defined in ncood.keys (import it from there: no torch); kept here for old imports
    "ScorerParts": "package", "log_ood_scorer": "package", "write_scorer": "package",
    "threshold_at_tpr": "package",  # the FPR95 threshold definition (ncood.ood.metrics) the package uses for is_ood
    **{name: "decoding" for name in ("INPUT_COLUMN", "InputError", "ServingLimits", "encode_png")},
    **{name: "scorer" for name in ("OUTPUT_COLUMNS", "Scorer", "ScorerSpec")},
    "OODScorerModel": "pyfunc",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())  # PEP 562: ncood.lazy
