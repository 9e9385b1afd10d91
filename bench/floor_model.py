"""MLflow's floor for bench/serve.py: a trivial pyfunc with the scorer's signature (one string column `image` in,
the same output columns out) that does no work, loaded and served the same way as the scorer (in process:
`mlflow.pyfunc.load_model(...).predict`; over HTTP: `mlflow models serve --env-manager local`). Its latency is what
MLflow costs by itself: in process its pyfunc layer (schema enforcement of the input frame, the predict wrapper);
over HTTP also the server (JSON parsing, the response's serialization).

A models-from-code file: MLflow runs it when it loads the model; the output columns come from the model_config.
The response frame of each request size is built once and returned again (building it is work a real model does,
and ncood's own frame is counted in ncood's time): the floor is MLflow's cost, not pandas' column inference.
"""
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class FloorModel(PythonModel):
    def load_context(self, context) -> None:
        self.doubles = list(context.model_config["doubles"])  # the score columns
        self.frames: dict[int, pd.DataFrame] = {}  # request size -> the response (bench/serve.py sends two sizes)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        n = len(model_input)
        if n not in self.frames:
            self.frames[n] = pd.DataFrame({**{c: [0.0] * n for c in self.doubles}, "predicted_class": ["0"] * n,
                                           "is_ood": [False] * n})
        return self.frames[n]


set_model(FloorModel())
