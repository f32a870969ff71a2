"""Small conformant prediction servers (OIP v2, KServe v1, modeltheft's own) over any models."""

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Body, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sklearn.base import ClassifierMixin

from modeltheft.tasks import Task, task_from_model


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def reset(app: FastAPI, **config: Any) -> None:
    """Fresh server-side bookkeeping and behaviour; ``config`` overrides the defaults."""
    app.state.rows = 0  # rows answered
    app.state.calls = 0  # predict/infer requests, scripted or not
    app.state.bodies = []  # request bodies answered
    app.state.script = []  # responses sent, in order, before any real answer
    app.state.api_key = None  # when set, a Bearer token is required
    app.state.outputs = ("predict_proba", "predict")  # OIP outputs; the last is the default
    app.state.metadata = True  # OIP: serve GET /v2/models/{name}
    app.state.input_datatype = "FP64"  # OIP: the input datatype the metadata declares
    app.state.declare_outputs = True  # OIP: the metadata lists the outputs (MLServer: optional)
    app.state.declare_inputs = True  # OIP: the metadata lists the inputs (MLServer: optional)
    app.state.ignore_outputs = False  # OIP: answer the default output whatever is asked
    app.state.kind = "proba"  # KServe: proba, labels or float-labels
    app.state.publish_task = True  # ours: /v1/model carries the task schema
    app.state.info_script = []  # ours: responses to GET /v1/model before the real one
    for name, value in config.items():
        setattr(app.state, name, value)


def _gate(app: FastAPI, request: Request) -> Response | None:
    """Count the call, then the next scripted response or an auth failure, if any."""
    app.state.calls += 1
    if app.state.script:
        return app.state.script.pop(0)
    if app.state.api_key is not None:
        given = request.headers.get("authorization")
        if given is None:
            return error(401, "missing bearer token")
        if given != f"Bearer {app.state.api_key}":
            return error(403, "token not allowed for this model")
    return None


def _values(labels: np.ndarray) -> list[Any]:
    """Labels as JSON values (ints or strings)."""
    return [v.item() if isinstance(v, np.generic) else v for v in labels]


def _strings(model: ClassifierMixin) -> bool:
    return np.asarray(model.classes_).dtype.kind in "OU"


def oip_app(models: dict[str, ClassifierMixin]) -> FastAPI:
    """Open Inference Protocol v2, shaped like MLServer's scikit-learn runtime."""
    app = FastAPI()
    reset(app)

    def specs(model: ClassifierMixin) -> dict[str, dict[str, Any]]:
        label_type = "BYTES" if _strings(model) else "INT64"
        k = len(model.classes_)
        return {
            "predict": {"name": "predict", "datatype": label_type, "shape": [-1, 1]},
            "predict_proba": {"name": "predict_proba", "datatype": "FP64", "shape": [-1, k]},
        }

    @app.get("/v2/models/{name}")
    def model_metadata(name: str) -> Any:
        if not app.state.metadata or name not in models:
            return error(404, f"Model {name} not found")
        model = models[name]
        inputs = {"name": "input-0", "datatype": app.state.input_datatype}
        declared = app.state.outputs if app.state.declare_outputs else ()
        return {
            "name": name,
            "platform": "sklearn",
            "inputs": [{**inputs, "shape": [-1, int(model.n_features_in_)]}]
            if app.state.declare_inputs
            else [],
            "outputs": [specs(model)[o] for o in declared],
        }

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, request: Request, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        refused = _gate(app, request)
        if refused is not None:
            return refused
        if name not in models:
            return error(404, f"Model {name} not found")
        model = models[name]
        app.state.bodies.append(body)
        outputs = app.state.outputs
        tensor = body["inputs"][0]
        allowed = {"FP64", "FP32", app.state.input_datatype}
        d = int(model.n_features_in_)
        if tensor["datatype"] not in allowed or tensor["shape"][1:] != [d]:
            return error(400, f"expected {app.state.input_datatype} [-1, {d}], got {tensor}"[:200])
        dtype = np.float32 if tensor["datatype"] == "FP32" else np.float64
        X = np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"]).astype(float)
        wanted = [o["name"] for o in body.get("outputs", [])] or [outputs[-1]]
        if app.state.ignore_outputs:
            wanted = [outputs[-1]]
        answer = []
        for out in wanted:
            if out not in outputs:
                return error(400, f"Output {out} not available")
            if out == "predict":
                data = _values(model.predict(X))
                shape = [len(X)]
            else:
                data = model.predict_proba(X).ravel().tolist()
                shape = [len(X), len(model.classes_)]
            answer.append({**specs(model)[out], "shape": shape, "data": data})
        app.state.rows += len(X)
        return {"model_name": name, "outputs": answer}

    return app


ORT_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64"}
NUMPY_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}


def onnx_app(models: dict[str, ClassifierMixin], folder: Path) -> FastAPI:
    """OIP v2 shaped like Triton serving skl2onnx models, run by a real onnxruntime session:
    its metadata and outputs are the graph's (``label`` INT64 [-1], ``probabilities`` FP32
    [-1, k], input FP32), all sent unless the request names some; an unknown output is a 400,
    and so is onnxruntime's own refusal of FP64 inputs ("Unexpected input data type")."""
    from modeltheft.victim.onnx import export_onnx, single_thread_session

    sessions = {
        name: single_thread_session(export_onnx(model, folder / f"{name}.onnx"))
        for name, model in models.items()
    }
    app = FastAPI()
    reset(app)

    def spec(arg: Any) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        return {"name": arg.name, "datatype": ORT_TYPES.get(arg.type, arg.type), "shape": shape}

    @app.get("/v2/models/{name}")
    def model_metadata(name: str) -> Any:
        if not app.state.metadata or name not in sessions:
            return error(404, f"Request for unknown model: '{name}' is not found")
        session = sessions[name]
        return {
            "name": name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [spec(arg) for arg in session.get_inputs()],
            "outputs": [spec(arg) for arg in session.get_outputs()],
        }

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, request: Request, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        refused = _gate(app, request)
        if refused is not None:
            return refused
        if name not in sessions:
            return error(404, f"Request for unknown model: '{name}' is not found")
        session = sessions[name]
        app.state.bodies.append(body)
        tensor = body["inputs"][0]
        dtype = NUMPY_TYPES.get(tensor["datatype"], np.float64)
        X = np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])
        available = [o.name for o in session.get_outputs()]
        wanted = [o["name"] for o in body.get("outputs", [])] or available
        for out in wanted:
            if out not in available:
                return error(400, f"unexpected inference output '{out}' for model '{name}'")
        try:
            results = session.run(wanted, {session.get_inputs()[0].name: X})
        except Exception as exc:  # onnxruntime's InvalidArgument and friends
            return error(400, str(exc)[:300])
        answer = [
            {
                "name": out,
                "datatype": ORT_TYPES.get(f"tensor({np.asarray(r).dtype})", "FP32"),
                "shape": list(np.asarray(r).shape),
                "data": np.asarray(r).ravel().tolist(),
            }
            for out, r in zip(wanted, results, strict=True)
        ]
        app.state.rows += len(X)
        return {"model_name": name, "model_version": "1", "outputs": answer}

    return app


def kserve_app(models: dict[str, ClassifierMixin]) -> FastAPI:
    """KServe v1 / TF-Serving ``:predict``, answering probabilities or labels (``kind``)."""
    app = FastAPI()
    reset(app)

    @app.post("/v1/models/{name}:predict")
    def predict(name: str, request: Request, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        refused = _gate(app, request)
        if refused is not None:
            return refused
        if name not in models:
            return error(404, f"Model with name {name} does not exist.")
        model = models[name]
        app.state.bodies.append(body)
        X = np.asarray(body["instances"], dtype=float)
        d = int(model.n_features_in_)
        if X.ndim != 2 or X.shape[1] != d:
            return error(400, f"expected instances of {d} features, got shape {list(X.shape)}")
        app.state.rows += len(X)
        if app.state.kind == "proba":
            return {"predictions": model.predict_proba(X).tolist()}
        labels = _values(model.predict(X))
        if app.state.kind == "float-labels":
            labels = [float(v) for v in labels]
        return {"predictions": labels}

    return app


def ours_app(model: ClassifierMixin, task: Task | None = None) -> FastAPI:
    """modeltheft's ``/v1/model`` (with the ``task`` schema) and ``/v1/predict`` contract."""
    app = FastAPI()
    reset(app)
    served = task_from_model(model, task, name="standin")

    @app.get("/v1/model")
    def model_info() -> Any:
        if app.state.info_script:
            return app.state.info_script.pop(0)
        info = {
            "name": served.name,
            "input_shape": [served.n_features],
            "classes": served.classes.tolist(),
            "defenses": [],
            "max_batch": 256,
            "inference": "python",
        }
        if app.state.publish_task:
            info["task"] = served.schema()
        return info

    @app.post("/v1/predict")
    def predict(request: Request, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        refused = _gate(app, request)
        if refused is not None:
            return refused
        X = np.asarray(body["inputs"], dtype=float)
        if X.ndim != 2 or X.shape[1] != served.n_features:
            return error(422, f"each input must have {served.n_features} features")
        app.state.bodies.append(body)
        app.state.rows += len(X)
        labels = _values(model.predict(X))
        probs = model.predict_proba(X).tolist()
        return {
            "predictions": [
                {"label": label, "probabilities": p} for label, p in zip(labels, probs, strict=True)
            ]
        }

    return app


IRIS_NAMES = np.array(["setosa", "versicolor", "virginica"])


def fitted_models() -> dict[str, ClassifierMixin]:
    """Small forests: ``bc`` (30 features, 2 classes), ``iris`` (3 int classes) and
    ``iris-names`` (the same with string classes)."""
    from sklearn.ensemble import RandomForestClassifier

    from modeltheft.tasks import get_task

    models: dict[str, ClassifierMixin] = {}
    for name, task_name, names in [
        ("bc", "breast-cancer", None),
        ("iris", "iris", None),
        ("iris-names", "iris", IRIS_NAMES),
    ]:
        data = get_task(task_name).data
        assert data is not None
        y = data.y_train if names is None else names[data.y_train]
        forest = RandomForestClassifier(n_estimators=20, random_state=0)
        models[name] = forest.fit(data.X_train, y)
    return models
