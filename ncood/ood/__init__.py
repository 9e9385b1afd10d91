"""OoD detection: DDU class Gaussians, the score registry (ncood.ood.scores; the scores in ncood.ood.baselines
and ncood.ood.posthoc) and detection metrics (ncood.ood.metrics)."""
from ncood.ood.gaussian import JITTERS, ClassGaussians, GaussianFitError, fit_class_gaussians
from ncood.ood.metrics import detection_metrics, fpr_at_tpr, threshold_at_tpr
from ncood.ood.scores import (SCORES, SPACES, FitData, Fitted, Head, Score, ScoreFit, ScoreInputs, Space,
                              compute_scores, fit_diagnostics, fit_scores, pack_states, register_score, resolve_params,
                              score_params, served_scores, unpack_states)
from ncood.ood import baselines  # noqa: F401,E402  (registers gmm, feature_norm and the logit scores, first)
from ncood.ood import posthoc  # noqa: F401,E402  (registers the post-hoc detectors)

__all__ = [
    "JITTERS", "ClassGaussians", "GaussianFitError", "fit_class_gaussians",
    "detection_metrics", "fpr_at_tpr", "threshold_at_tpr",
    "SCORES", "SPACES", "FitData", "Fitted", "Head", "Score", "ScoreFit", "ScoreInputs", "Space", "compute_scores",
    "fit_diagnostics", "fit_scores", "pack_states", "register_score", "resolve_params", "score_params",
    "served_scores",
    "unpack_states",
]
