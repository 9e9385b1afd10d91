"""The MLflow pyfunc wrapper of the served OoD scorer: what MLflow's scoring server calls for each request.

MLflow 3.17 hands `predict` a pandas DataFrame for every request format whatever the type hint, when the model has
a column signature (one string column `image`): the scoring server parses `dataframe_split`, `dataframe_records`,
`instances` and `inputs` into a DataFrame and enforces the schema on it before `predict` runs. A type-hinted
`predict` (list[str]) would replace the logged signature with one inferred from the hints and change the request
and response formats, so the wrapper keeps the DataFrame hint and only reads the column out of it.
"""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from ncood.serve.decoding import InputError, limits_from_env, request_column
from ncood.serve.scorer import Scorer


class OODScorerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: artifacts 'spec', 'weights', 'gaussians', 'scores' (absent in format 1);
    $NCOOD_SERVING_LIMITS = ServingLimits overrides."""

    def load_context(self, context) -> None:
        # No global torch state is touched here (grad mode, threads): MLflow also loads the model inside the
        # training process to check the input example. Scoring runs under torch.inference_mode.
        a = context.artifacts
        self.scorer = Scorer.from_files(a["spec"], a["weights"], a["gaussians"], a.get("scores"), limits_from_env())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # The pd.DataFrame hint tells MLflow to take the schema from the logged signature, not from type hints.
        try:
            cols = self.scorer.score_base64(request_column(model_input))
        except InputError as e:  # the scoring server answers MlflowException with its HTTP code: 400 here
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        except ValueError as e:  # e.g. non-finite scores: a model problem, not the client's
            raise MlflowException(f"scoring failed: {e}", error_code=INTERNAL_ERROR) from None
        return pd.DataFrame(cols, columns=list(self.scorer.columns))
