"""The photo model's code, as MLflow loads it (models from code): MLflow runs this file when the
model is loaded or served, so nothing of the project is unpickled. The settings (face detector,
request limits) come from the logged model's `model_config`, the weights from its artifact
`model.pt`. This is the one file of the package that imports mlflow at its top: only MLflow
imports it, never the library."""
from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException

from fer.faces import DetectorParams
from fer.models import Network, load_model
from fer.photo_model import INPUT_COLUMN, BadPhoto, RequestLimits, predict_photos, settings_from_config
from fer.predict import CHECKPOINT_ARTIFACT


class PhotoModel(mlflow.pyfunc.PythonModel):
    """Face detector + crop + CNN; input and output as `fer.photo_model` describes them."""

    def load_context(self, context: Any) -> None:
        self.detector: DetectorParams
        self.limits: RequestLimits
        self.detector, self.limits = settings_from_config(context.model_config)
        self.model: Network = load_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if INPUT_COLUMN not in model_input:
            raise MlflowException.invalid_parameter_value(f"expected a column '{INPUT_COLUMN}' of base64 images")
        try:
            return predict_photos(self.model, model_input[INPUT_COLUMN].tolist(), self.detector, limits=self.limits)
        except BadPhoto as error:  # the scoring server answers an MlflowException with HTTP 400
            raise MlflowException.invalid_parameter_value(str(error)) from None


mlflow.models.set_model(PhotoModel())
