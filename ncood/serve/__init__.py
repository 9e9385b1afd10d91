"""Serving: the MLflow pyfunc OoD scorer (scorer.py), packaging a finished trial as that model (package.py), and
`ncood register` (register.py). Deployment notes and clients live in deploy/serving/."""
from ncood.serve.package import SCORER_NAME, ScorerParts, log_ood_scorer, write_scorer
from ncood.serve.scorer import (INPUT_COLUMN, OUTPUT_COLUMNS, InputError, OODScorerModel, Scorer, ScorerSpec,
                                ServingLimits, encode_png, threshold_at_tpr)

__all__ = [
    "INPUT_COLUMN", "OUTPUT_COLUMNS", "SCORER_NAME", "InputError", "OODScorerModel", "Scorer", "ScorerParts",
    "ScorerSpec", "ServingLimits", "encode_png", "log_ood_scorer", "threshold_at_tpr", "write_scorer",
]
