"""The MLflow pyfunc of a churnlens model, logged as code ("models from code").

`churnlens.training.tracking.log_model` passes this file's path as `python_model`; MLflow
copies it into the logged model and runs it when the model is loaded, so the model is
defined by this code and the pickled `ChurnModel` artifact, not by a CloudPickle of a
class. The churnlens package travels with the model in `code_paths`.
"""

from __future__ import annotations

import pickle

import mlflow
import pandas as pd


class ChurnPyfunc(mlflow.pyfunc.PythonModel):
    """Feature rows in (plain str and float columns), flat score columns out
    (`churnlens.training.scoring.score_frame`)."""

    def load_context(self, context) -> None:
        with open(context.artifacts["bundle"], "rb") as fh:
            self.model = pickle.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from churnlens.training.scoring import score_frame

        return score_frame(self.model, model_input)


# MLflow's contract for models from code: the file names its model when it is run. Running
# it only registers this small object; nothing is loaded until `load_context`.
mlflow.models.set_model(ChurnPyfunc())
