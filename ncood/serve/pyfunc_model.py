"""The models-from-code entry point of the `ood_scorer` MLflow model (no pickle): MLflow runs this file when it
loads the model, with the model's own copy of ncood first on sys.path (code_paths). The class lives in
ncood.serve.pyfunc."""
from mlflow.models import set_model

from ncood.serve.pyfunc import OODScorerModel

set_model(OODScorerModel())
