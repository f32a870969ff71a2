"""Request and response bodies of the prediction API."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from modeltheft.data import N_FEATURES

Pixel = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
Row = Annotated[list[Pixel], Field(min_length=N_FEATURES, max_length=N_FEATURES)]


def request_model(max_batch: int) -> type[BaseModel]:
    """The ``POST /v1/predict`` body model, with the server's batch limit."""

    class PredictRequest(BaseModel):
        """Rows of 64 pixel values in [0, 1]."""

        model_config = ConfigDict(extra="forbid")
        inputs: Annotated[list[Row], Field(min_length=1, max_length=max_batch)]

    return PredictRequest


class Prediction(BaseModel):
    """The answer for one row."""

    label: int
    probabilities: list[float] | None


class PredictResponse(BaseModel):
    """Answers in input order."""

    predictions: list[Prediction]


class ModelInfo(BaseModel):
    """Public facts about the served model; nothing secret."""

    name: str
    input_shape: list[int]
    classes: list[int]
    defenses: list[str]
    max_batch: int
    inference: str


class ErrorBody(BaseModel):
    """Every error the API returns."""

    detail: str
