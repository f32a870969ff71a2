"""``create_app(settings)``: the prediction service, built from explicit settings."""

from fastapi import FastAPI

from modeltheft import __version__
from modeltheft.defenses.guarded import GuardedModel
from modeltheft.defenses.presets import load_pipeline
from modeltheft.service.errors import install_error_handlers
from modeltheft.service.routes import meta, predict
from modeltheft.service.schemas import request_model
from modeltheft.service.settings import Settings
from modeltheft.victim import load_victim, train_victim


def create_app(settings: Settings) -> FastAPI:
    """A FastAPI app serving the configured victim behind the configured defenses."""
    pipeline = load_pipeline(settings.defense)
    if settings.model_path is None:
        model, name = train_victim().model, "rf (trained at start-up)"
    else:
        loaded = load_victim(settings.model_path)
        model, name = loaded.model, str(loaded.metadata.get("family", settings.model_path.name))
    app = FastAPI(title="modeltheft prediction service", version=__version__)
    app.state.settings = settings
    app.state.keys = settings.keys
    app.state.model_name = name
    app.state.guarded = GuardedModel(model, pipeline, seed=settings.seed)
    app.state.request_model = request_model(settings.max_batch)
    install_error_handlers(app)
    app.include_router(meta.router)
    app.include_router(predict.router)
    return app
