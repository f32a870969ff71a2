"""A KServe 0.21 ``kserve.Model`` serving a scikit-learn model saved with joblib, on loopback.

Run by tests/servers/test_kserve.py with ``.venv-kserve/bin/python`` (never imported by the
project's tests): ``python kserve_digits.py --model_name NAME --model_file PATH --http_port N
--enable_grpc false``. It serves NAME, whose KServe v1 ``:predict`` answers
``{"predictions": labels}``, and NAME-proba, which answers the probability rows.
"""

import argparse
import json

import joblib
import kserve
import numpy as np
import uvicorn


class LoopbackConfig(uvicorn.Config):
    """KServe's REST server listens on 0.0.0.0; the tests keep it to 127.0.0.1."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)


class Digits(kserve.Model):
    """``predict`` of a scikit-learn classifier, or ``predict_proba`` with ``proba``."""

    def __init__(self, name: str, path: str, proba: bool) -> None:
        super().__init__(name)
        self.model = joblib.load(path)  # written by the test itself
        self.proba = proba
        self.ready = True

    def predict(self, payload: dict | bytes, headers: dict | None = None) -> dict:
        if isinstance(payload, bytes):  # a body sent without a JSON content type
            payload = json.loads(payload)
        X = np.asarray(payload["instances"], dtype=float)
        answers = self.model.predict_proba(X) if self.proba else self.model.predict(X)
        return {"predictions": answers.tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_file", required=True)
    args, _ = parser.parse_known_args()
    uvicorn.Config = LoopbackConfig
    models = [
        Digits(args.model_name, args.model_file, proba=False),
        Digits(f"{args.model_name}-proba", args.model_file, proba=True),
    ]
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False).start(models)
