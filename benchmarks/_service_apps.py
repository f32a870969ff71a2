"""Two baseline apps for ``benchmarks/service.py``, served one worker each by uvicorn.

- ``trivial``: the HTTP stack alone. Parses the same JSON body as ``POST /v1/predict`` (a
  pydantic model, rows of floats) and answers a constant label.
- ``bare``: the usual "FastAPI + scikit-learn" endpoint. Loads the victim named by
  ``MODELTHEFT_BENCH_MODEL`` with :func:`modeltheft.victim.load_victim` and answers each row
  with ``model.predict_proba`` (the label and its probabilities), no auth, no defenses.

    MODELTHEFT_BENCH_MODEL=victim.skops uvicorn benchmarks._service_apps:bare --factory ...
    uvicorn benchmarks._service_apps:trivial ...

Both handlers are plain ``def`` (run in the threadpool), like the service's own handler.
"""

import os
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel

MODEL_ENV = "MODELTHEFT_BENCH_MODEL"


class Body(BaseModel):
    """The same body as the service's: ``{"inputs": [[64 floats], ...]}``."""

    inputs: list[list[float]]


trivial = FastAPI(title="trivial")


@trivial.post("/v1/predict")
def trivial_predict(body: Body) -> dict:
    """A constant label per row: what the HTTP stack and body parsing alone cost."""
    return {"predictions": [{"label": 0, "probabilities": None} for _ in body.inputs]}


def bare() -> FastAPI:
    """FastAPI + scikit-learn's ``predict_proba`` on the victim (a uvicorn factory)."""
    import numpy as np

    from modeltheft.victim import load_victim

    model = load_victim(Path(os.environ[MODEL_ENV])).model
    app = FastAPI(title="bare fastapi + scikit-learn")

    @app.post("/v1/predict")
    def bare_predict(body: Body) -> dict:
        proba = model.predict_proba(np.asarray(body.inputs, dtype=float))
        labels = model.classes_[proba.argmax(axis=1)]
        return {
            "predictions": [
                {"label": int(label), "probabilities": row}
                for label, row in zip(labels, proba.tolist(), strict=True)
            ]
        }

    return app
