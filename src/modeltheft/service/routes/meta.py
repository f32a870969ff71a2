"""Health and public model facts."""

from fastapi import APIRouter, Request

from modeltheft.data import N_FEATURES
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
    """Input shape, classes and the names of the active defenses (no parameters, no secrets)."""
    return ModelInfo(
        name=request.app.state.model_name,
        input_shape=[N_FEATURES],
        classes=[int(c) for c in guarded.classes],
        defenses=guarded.pipeline.stage_names,
        max_batch=request.app.state.settings.max_batch,
        inference=request.app.state.inference,
    )
