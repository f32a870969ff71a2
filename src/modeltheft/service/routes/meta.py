"""Health and public model facts."""

from fastapi import APIRouter, Request

from modeltheft.service.deps import Guarded
from modeltheft.service.schemas import ModelInfo

router = APIRouter()


@router.get("/healthz")
def healthz(guarded: Guarded) -> dict[str, str]:
    """Health: ``{"status": "ok"}``, or 503 if the state store cannot be written now."""
    guarded.store.ping()
    return {"status": "ok"}


@router.get("/v1/model", response_model=ModelInfo)
def model_info(request: Request, guarded: Guarded) -> ModelInfo:
    """Input shape, classes, the task's schema (features, bounds) and the active defenses'
    names (no parameters, no secrets)."""
    task = guarded.task
    return ModelInfo(
        name=request.app.state.model_name,
        input_shape=[task.n_features],
        classes=task.classes.tolist(),
        defenses=guarded.pipeline.stage_names,
        max_batch=request.app.state.settings.max_batch,
        inference=request.app.state.inference,
        task=request.app.state.task_schema,
    )
