"""OoD detection: DDU class Gaussians, the score registry and detection metrics (REFERENCE.md sec. 5)."""
from ncood.ood.gaussian import JITTERS, ClassGaussians, GaussianFitError, fit_class_gaussians
from ncood.ood.metrics import detection_metrics, fpr_at_tpr, threshold_at_tpr
from ncood.ood.scores import (SCORES, FeatureSpace, Score, ScoreFit, ScoreInputs, compute_scores, fit_scores,
                              register_score, to_feature_space)

__all__ = [
    "JITTERS", "ClassGaussians", "GaussianFitError", "fit_class_gaussians",
    "detection_metrics", "fpr_at_tpr", "threshold_at_tpr",
    "SCORES", "FeatureSpace", "Score", "ScoreFit", "ScoreInputs", "compute_scores", "fit_scores",
    "register_score", "to_feature_space",
]
