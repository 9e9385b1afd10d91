"""The MLflow pyfunc wrapper of the served OoD scorer: what MLflow's scoring server calls for each request.

Why `predict` takes a DataFrame (MLflow 3.17): with the logged column signature (one string column `image`) the
scoring server parses `dataframe_split` / `dataframe_records` bodies into a DataFrame (scoring_server
`infer_and_parse_data`) and pyfunc's schema enforcement runs on it before `predict`. A type-hinted `predict`
(list[str]) would make the signature come from the hints, and the server then accepts only `{"inputs": ...}`
bodies (scoring_server `_parse_json_data`): the request format would change. So the DataFrame hint stays and the
wrapper only reads the column out of it (ncood.serve.decoding.request_column); the response stays a DataFrame
(one record per image in the JSON).

The response frame is built from a dict of the scorer's arrays in response order (no `columns=` reindexing) with the
class names already in the string dtype pandas infers for them (computed once at load): the same frame as
`pd.DataFrame(cols, columns=...)`, column for column and dtype for dtype (tests/test_serve.py), at about half the
cost for one image.
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
        # The dtype pandas infers for the class names (pandas 3: its string dtype; before: object), once.
        self.class_dtype = pd.Series(self.scorer.class_names).dtype

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # The pd.DataFrame hint tells MLflow to take the schema from the logged signature, not from type hints.
        try:
            cols = self.scorer.score_base64(request_column(model_input))
        except InputError as e:  # the scoring server answers MlflowException with its HTTP code: 400 here
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        except ValueError as e:  # e.g. non-finite scores: a model problem, not the client's
            raise MlflowException(f"scoring failed: {e}", error_code=INTERNAL_ERROR) from None
        cols["predicted_class"] = pd.array(cols["predicted_class"], dtype=self.class_dtype)
        return pd.DataFrame({c: cols[c] for c in self.scorer.columns}, copy=False)
