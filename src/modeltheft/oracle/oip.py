"""A client of the Open Inference Protocol v2 (KServe v2, Seldon MLServer, NVIDIA Triton)."""

import math
from typing import Any, Unpack
from urllib.parse import quote

import numpy as np

from modeltheft.errors import ConfigError, OracleError
from modeltheft.oracle.base import OracleAnswers
from modeltheft.oracle.http import HttpOptions, NamedModelOracle, checked_answers

PROBA_OUTPUT = "predict_proba"  # MLServer's scikit-learn runtime names its outputs like this
LABEL_OUTPUT = "predict"
DATATYPES = ("FP64", "FP32")
DEFAULT_INPUT = "input-0"


def _flatten(data: Any) -> list[Any]:
    """Row-major values of a tensor's ``data`` (flat as the protocol says, or nested)."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


class OipV2Oracle(NamedModelOracle):
    """``POST {url}/v2/models/{model_name}/infer`` with one ``[n, 64]`` tensor per batch.

    Before the first batch it reads ``GET {url}/v2/models/{model_name}`` to choose the outputs:
    ``predict_proba`` (and ``predict``) when listed, else ``predict``, else the first output.
    Without metadata it names no outputs (the server sends its defaults) and reads
    ``predict_proba``, then ``predict``, then the first output of the answer. An output of shape
    ``[n, c]`` holds probabilities; one of shape ``[n]`` or ``[n, 1]`` holds labels.
    The input tensor is named after the metadata's first input, else ``input_name``.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        budget: int,
        *,
        datatype: str = "FP64",
        input_name: str | None = None,
        **options: Unpack[HttpOptions],
    ) -> None:
        super().__init__(url, model_name, budget, **options)
        if datatype not in DATATYPES:
            raise ConfigError(f"datatype must be one of {', '.join(DATATYPES)}, got {datatype!r}")
        self.datatype = datatype
        self.input_name = input_name
        self.model_url = f"{self.url}/v2/models/{quote(model_name, safe='')}"
        self.outputs: list[str] | None = None  # what to ask for; None = the server's defaults
        self._discovered = False

    def _discover(self) -> None:
        """Read the model metadata once; transient failures (429, 5xx) are retried next batch."""
        if self._discovered:
            return
        response = self._call("GET", self.model_url)
        status = response.status_code
        if status in (401, 403, 429) or status >= 500:
            return  # the infer call reports auth errors; rate limits and outages may pass
        self._discovered = True
        try:
            meta = response.json() if status == 200 else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            return
        outputs = meta.get("outputs")
        names = [
            o["name"]
            for o in (outputs if isinstance(outputs, list) else [])
            if isinstance(o, dict) and isinstance(o.get("name"), str)
        ]
        if PROBA_OUTPUT in names:
            self.outputs = [PROBA_OUTPUT] + ([LABEL_OUTPUT] if LABEL_OUTPUT in names else [])
        elif LABEL_OUTPUT in names:
            self.outputs = [LABEL_OUTPUT]
        elif names:
            self.outputs = [names[0]]
        inputs = meta.get("inputs")
        if (
            self.input_name is None
            and isinstance(inputs, list)
            and inputs
            and isinstance(inputs[0], dict)
            and isinstance(inputs[0].get("name"), str)
        ):
            self.input_name = inputs[0]["name"]

    def _request(self, X: np.ndarray) -> tuple[str, dict[str, Any]]:
        self._discover()
        values = X.astype(np.float32) if self.datatype == "FP32" else X
        payload: dict[str, Any] = {
            "inputs": [
                {
                    "name": self.input_name or DEFAULT_INPUT,
                    "shape": list(X.shape),
                    "datatype": self.datatype,
                    "data": values.ravel().tolist(),
                }
            ]
        }
        if self.outputs is not None:
            payload["outputs"] = [{"name": name} for name in self.outputs]
        return f"{self.model_url}/infer", payload

    def _tensor(self, output: Any, n: int) -> tuple[str, list[int], list[Any]]:
        """Name, shape and flat data of one response output, checked against ``n`` rows."""
        if not isinstance(output, dict):
            raise OracleError(f"unexpected output in the answer from {self.url}: {output!r:.100}")
        name = str(output.get("name"))
        shape = output.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        ):
            raise OracleError(f"output {name!r} has an invalid shape {shape!r}")
        data = _flatten(output.get("data"))
        if math.prod(shape) != len(data):
            raise OracleError(f"output {name!r} has shape {shape} but {len(data)} values")
        if shape[0] != n:
            raise OracleError(f"asked {n} rows, output {name!r} has shape {shape}")
        return name, shape, data

    def _parse(self, body: Any, n: int) -> OracleAnswers:
        outputs = body.get("outputs") if isinstance(body, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise OracleError(f"unexpected answer from {self.url}: no 'outputs' list")
        tensors = [self._tensor(output, n) for output in outputs]
        by_name = {name: (shape, data) for name, shape, data in tensors}
        labels: list[Any] | None = None
        probabilities: list[list[Any]] | None = None
        if PROBA_OUTPUT in by_name:
            shape, data = by_name[PROBA_OUTPUT]
            probabilities = self._rows(PROBA_OUTPUT, shape, data, n)
        if LABEL_OUTPUT in by_name:
            shape, data = by_name[LABEL_OUTPUT]
            labels = self._labels(LABEL_OUTPUT, shape, data)
        if labels is None and probabilities is None:
            name, shape, data = tensors[0]
            if len(shape) == 2 and shape[1] > 1:
                probabilities = self._rows(name, shape, data, n)
            else:
                labels = self._labels(name, shape, data)
        return checked_answers(n, self.n_classes, labels, probabilities)

    @staticmethod
    def _labels(name: str, shape: list[int], data: list[Any]) -> list[Any]:
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            return data
        raise OracleError(f"label output {name!r} has shape {shape}, expected [n] or [n, 1]")

    @staticmethod
    def _rows(name: str, shape: list[int], data: list[Any], n: int) -> list[list[Any]]:
        if len(shape) != 2:
            raise OracleError(f"probability output {name!r} has shape {shape}, expected [n, c]")
        c = shape[1]
        return [data[i * c : (i + 1) * c] for i in range(n)]
