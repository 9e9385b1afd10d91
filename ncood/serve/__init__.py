"""Serving: request decoding (decoding.py), the OoD scorer (scorer.py), its MLflow pyfunc wrapper (pyfunc.py),
packaging a finished trial as that model (package.py), and `ncood register` (register.py). Deployment notes and
clients live in deploy/serving/."""
from ncood.ood.metrics import threshold_at_tpr
from ncood.serve.decoding import INPUT_COLUMN, InputError, ServingLimits, encode_png
from ncood.serve.package import SCORER_NAME, ScorerParts, log_ood_scorer, write_scorer
from ncood.serve.pyfunc import OODScorerModel
from ncood.serve.scorer import OUTPUT_COLUMNS, Scorer, ScorerSpec

__all__ = [
    "INPUT_COLUMN", "OUTPUT_COLUMNS", "SCORER_NAME", "InputError", "OODScorerModel", "Scorer", "ScorerParts",
    "ScorerSpec", "ServingLimits", "encode_png", "log_ood_scorer", "threshold_at_tpr", "write_scorer",
]
