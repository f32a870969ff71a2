"""Request and response bodies of the prediction API, built from the served model's task."""

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from modeltheft.tasks import Task


def _value_type(task: Task) -> Any:
    """A finite JSON number; bounds shared by every feature are documented (not checked here).

    Bounds are checked after parsing by :func:`modeltheft.service.inputs.check_bounds`, whose
    message names the feature; per-feature bounds are published by ``GET /v1/model``.
    """
    extra: dict[str, Any] = {}
    lower, upper = task.lower, task.upper
    if np.isfinite(lower).all() and (lower == lower[0]).all():
        extra["minimum"] = float(lower[0])
    if np.isfinite(upper).all() and (upper == upper[0]).all():
        extra["maximum"] = float(upper[0])
    return Annotated[float, Field(strict=True, allow_inf_nan=False, json_schema_extra=extra)]


def request_model(max_batch: int, task: Task) -> type[BaseModel]:
    """The ``POST /v1/predict`` body model: rows of the task's width, at most ``max_batch``."""
    width = task.n_features
    row = Annotated[
        list[_value_type(task)],  # type: ignore[misc]
        Field(
            min_length=width,
            max_length=width,
            description=f"{width} numbers: the features of task {task.name!r} in order "
            "(names and bounds: GET /v1/model)",
        ),
    ]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"Rows of {width} numbers (the model's input width).",
        inputs=(Annotated[list[row], Field(min_length=1, max_length=max_batch)], ...),
    )


def response_model(task: Task) -> type[BaseModel]:
    """The ``POST /v1/predict`` answer model: labels are the task's classes."""
    k = task.n_classes
    label = Literal[tuple(task.classes.tolist())]  # type: ignore[valid-type]
    prediction = create_model(
        "Prediction",
        __doc__="The answer for one row: a class label and, unless withheld, k probabilities.",
        label=(label, ...),
        probabilities=(Annotated[list[float], Field(min_length=k, max_length=k)] | None, ...),
    )
    return create_model(
        "PredictResponse",
        __doc__="Answers in input order.",
        predictions=(list[prediction], ...),  # type: ignore[valid-type]
    )


class Prediction(BaseModel):
    """The answer for one row (any task)."""

    label: int | str
    probabilities: list[float] | None


class PredictResponse(BaseModel):
    """Answers in input order (any task)."""

    predictions: list[Prediction]


class ModelInfo(BaseModel):
    """Public facts about the served model; nothing secret."""

    name: str
    input_shape: list[int]
    classes: list[int] | list[str]
    defenses: list[str]
    max_batch: int
    inference: str
    task: dict[str, Any]
    """The task's public schema (:meth:`modeltheft.tasks.Task.schema`): features, bounds."""


class ErrorBody(BaseModel):
    """Every error the API returns."""

    detail: str
