"""The MLflow pyfunc wrapper of the served OoD scorer: what MLflow's scoring server calls for each request.

Why `predict` takes a DataFrame (MLflow 3.17): with the logged column signature (one string column `image`) the
scoring server parses `dataframe_split` / `dataframe_records` bodies into a DataFrame (scoring_server
`infer_and_parse_data`) and pyfunc's schema enforcement runs on it before `predict`. A type-hinted `predict`
(list[str]) would make the signature come from the hints, and the server then accepts only `{"inputs": ...}`
bodies (scoring_server `_parse_json_data`): the request format would change. So the DataFrame hint stays and the
wrapper only reads the column out of it (ncood.serve.decoding.request_column); the response stays a DataFrame
(one record per image in the JSON).

The response frame (`response_frame`) is the frame `pd.DataFrame(cols, columns=...)` gives, column for column and
dtype for dtype (tests/test_serve_parts.py), built without pandas' per-column inference, which cost as much as the
scores for a one-image request (~1,300 Python calls): the class names get the dtype pandas infers for them once at load
(pandas 3: its string dtype), and on pandas >= 3 the frame is assembled from its three blocks (the (S, N) float64
scores, the class names, is_ood) with pandas' public `pandas.api.internals.create_dataframe_from_blocks` (~300
calls); older pandas build it from the dict of columns in response order.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from ncood.serve.decoding import InputError, limits_from_env, request_column
from ncood.serve.scorer import Scorer

try:  # pandas >= 3.0
    from pandas.api.internals import create_dataframe_from_blocks
except ImportError:  # pandas 2.x: the dict constructor
    create_dataframe_from_blocks = None


def response_frame(cols: Mapping[str, np.ndarray], columns: Sequence[str], class_dtype) -> pd.DataFrame:
    """{column: (N,) array}: the float64 scores, then predicted_class (class names) and is_ood (bool), as `columns`
    orders them -> the response DataFrame; class_dtype: the dtype pandas infers for the class names."""
    *scores, classes_col, ood_col = columns
    classes = pd.array(cols[classes_col], dtype=class_dtype)
    if create_dataframe_from_blocks is None or isinstance(class_dtype, np.dtype):  # pandas 2, or object dtype
        return pd.DataFrame({**{c: cols[c] for c in scores}, classes_col: classes, ood_col: cols[ood_col]}, copy=False)
    s = len(scores)
    blocks = [(np.stack([cols[c] for c in scores]), np.arange(s)),  # (S, N) float64: one block, columns 0..S-1
              (classes, np.array([s])), (cols[ood_col].reshape(1, -1), np.array([s + 1]))]  # 1D extension, (1, N)
    return create_dataframe_from_blocks(blocks, index=pd.RangeIndex(len(classes)), columns=pd.Index(columns))


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
        return response_frame(cols, self.scorer.columns, self.class_dtype)
