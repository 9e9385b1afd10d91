"""MLflow's floor for bench/serve.py: a trivial pyfunc with the scorer's signature (one string column `image` in,
the same output columns out) that does no work, served the same way (`mlflow models serve --env-manager local`).
Its latency is what MLflow's scoring server costs by itself (HTTP, JSON, pandas, schema enforcement).

A models-from-code file: MLflow runs it when it loads the model; the output columns come from the model_config.
"""
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class FloorModel(PythonModel):
    def load_context(self, context) -> None:
        self.doubles = list(context.model_config["doubles"])  # the score columns

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        n = len(model_input)
        return pd.DataFrame({**{c: [0.0] * n for c in self.doubles}, "predicted_class": ["0"] * n,
                             "is_ood": [False] * n})


set_model(FloorModel())
