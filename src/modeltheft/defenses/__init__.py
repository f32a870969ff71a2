"""Defenses: composable stages run by the prediction service for every request."""

from modeltheft.defenses.base import (
    AdmissionStage,
    Answers,
    DefenseContext,
    OutputStage,
    Pipeline,
    Stage,
)
from modeltheft.defenses.guarded import GuardedModel
from modeltheft.defenses.presets import STAGES, load_pipeline, preset_names

__all__ = [
    "STAGES",
    "AdmissionStage",
    "Answers",
    "DefenseContext",
    "GuardedModel",
    "OutputStage",
    "Pipeline",
    "Stage",
    "load_pipeline",
    "preset_names",
]
