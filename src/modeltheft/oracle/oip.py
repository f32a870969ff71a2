"""A client of the Open Inference Protocol v2 (KServe v2, Seldon MLServer, NVIDIA Triton)."""

import math
from dataclasses import replace
from typing import Any, ClassVar, Unpack
from urllib.parse import quote

import numpy as np

from modeltheft.errors import OracleError
from modeltheft.oracle.http import (
    NON_EMPTY,
    AnswerRefused,
    HttpOptions,
    NamedModelOracle,
    checked_answers,
    described_task,
)
from modeltheft.registry import Options, Satisfies
from modeltheft.tasks.base import Task

PROBA_OUTPUT = "predict_proba"  # MLServer's scikit-learn runtime names its outputs like this
LABEL_OUTPUT = "predict"
PROBA_NAMES = (PROBA_OUTPUT, "probabilities", "output_probability", "probability")
"""Probability outputs by name: MLServer's, then skl2onnx's (Triton) with and without zipmap."""
LABEL_NAMES = (LABEL_OUTPUT, "label", "output_label")
REFUSED_OUTPUT = (400, 404, 422)
"""Statuses with which a server refuses an output it does not have (then we ask for less)."""
DEFAULT_INPUT = "input-0"
DTYPES: dict[str, Any] = {
    "FP64": np.float64,
    "FP32": np.float32,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT64": np.uint64,
    "UINT32": np.uint32,
    "UINT16": np.uint16,
    "UINT8": np.uint8,
}
DATATYPES = tuple(DTYPES)


def _feature_dims(shape: Any) -> list[int] | None:
    """The per-row dimensions of a metadata input shape: ``[-1, 30]`` or ``[30]`` → ``[30]``.

    A leading non-positive dimension (-1, 0) is the batch; None if the rest is not all positive.
    """
    if not isinstance(shape, list) or not shape:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        return None
    dims = shape[1:] if shape[0] <= 0 else shape
    return dims if dims and all(d > 0 for d in dims) else None


def _names(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(v, str) and v.strip() for v in value)
    )


def _is_float(datatype: Any, data: list[Any]) -> bool:
    """Whether a tensor holds floats: its datatype says FP..., or (none given) its values."""
    if isinstance(datatype, str):
        return datatype.startswith("FP")
    return any(isinstance(v, float) for v in data)


def _proba_like(shape: Any, datatype: Any) -> bool:
    """A ``[n, c]`` float output with c > 1 (or not declared): class probabilities."""
    return (
        isinstance(shape, list)
        and len(shape) == 2
        and isinstance(shape[1], int)
        and (shape[1] > 1 or shape[1] < 0)
        and (not isinstance(datatype, str) or datatype.startswith("FP"))
    )


def _label_like(shape: Any, datatype: Any) -> bool:
    """A ``[n]`` or ``[n, 1]`` integer or string output: labels."""
    return (
        isinstance(shape, list)
        and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
        and not (isinstance(datatype, str) and datatype.startswith("FP"))
    )


def _shape_type(spec: dict[str, Any]) -> tuple[Any, Any]:
    return spec.get("shape"), spec.get("datatype")


def _pick(specs: dict[str, dict[str, Any]], names: tuple[str, ...], like: Any) -> str | None:
    """The output to read: the first of ``names`` present, else the first that looks ``like``."""
    for name in names:
        if name in specs:
            return name
    for name, spec in specs.items():
        if like(spec.get("shape"), spec.get("datatype")):
            return name
    return None


def _flatten(data: Any) -> list[Any]:
    """Row-major values of a tensor's ``data`` (flat as the protocol says, or nested)."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _dt(datatype: Any, data: list[Any]) -> str:
    """A tensor's datatype, or (none given) FP64 / INT64 as its values suggest."""
    if isinstance(datatype, str):
        return datatype
    return "FP64" if _is_float(None, data) else "INT64"


class OipV2Oracle(NamedModelOracle):
    """``POST {url}/v2/models/{model_name}/infer`` with one ``[n, d]`` tensor per batch.

    :meth:`discover` reads ``GET {url}/v2/models/{model_name}``: the first input's shape gives
    the width (``[-1, 30]``: 30 features; ``[-1, 8, 8]``: sent as ``[n, 8, 8]``) and its
    datatype the tensor's (FP64, FP32, INT64, ...; ``datatype`` given explicitly wins); the
    outputs say what to ask for: ``predict_proba`` (and ``predict``) when listed, else
    ``predict``, else the first output. Without metadata it names no outputs (the server sends
    its defaults) and reads ``predict_proba``, then ``predict``, then the first output of the
    answer. An output of shape ``[n, k]`` holds probabilities; one of ``[n]`` or ``[n, 1]``
    labels, integers or strings (BYTES). OIP never names the classes: they come from ``task``
    or are learned from the answers (a declared ``predict_proba`` of ``[-1, k]`` fixes k).
    """

    name: ClassVar[str] = "oip-v2"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **NamedModelOracle._parameter_constraints,
        "datatype": [Options(*DATATYPES), None],
        "input_name": [NON_EMPTY, None],
        "outputs": [Satisfies(_names, "a list of non-empty output names"), None],
        "probabilities": [bool],
    }

    def __init__(
        self,
        url: str,
        model_name: str,
        budget: int,
        *,
        datatype: str | None = None,
        input_name: str | None = None,
        outputs: list[str] | None = None,
        probabilities: bool = False,
        **options: Unpack[HttpOptions],
    ) -> None:
        params = {"datatype": datatype, "input_name": input_name, "outputs": outputs}
        self.check({**params, "probabilities": probabilities})
        super().__init__(url, model_name, budget, **options)
        self.datatype = datatype or "FP64"
        self.datatype_given = datatype is not None
        self.input_name = input_name
        self.input_dims: list[int] | None = None
        self.model_url = f"{self.url}/v2/models/{quote(model_name, safe='')}"
        self.requested = list(outputs) if outputs else None
        self.wants_probabilities = probabilities
        # What to ask for (None: the server's defaults); while probing, what to ask for instead
        # if the server refuses the probability output we guessed.
        self.outputs: list[str] | None = self.requested
        self._fallback: list[str] | None = None
        self._probing = False
        self.note: str | None = None
        """Why the answers hold labels only although probabilities were wanted, if known."""
        if self.requested is None and probabilities:
            self._probe(None)

    def _missing(self) -> str:
        return (
            f"protocol oip-v2: {self.target} has no model metadata saying its input shape "
            "(GET /v2/models/{name}): give --task"
            + (f"; {self.metadata_failure}" if self.metadata_failure else "")
        )

    @property
    def probability_hint(self) -> str:
        return (
            "ask for its probability output with --output NAME (MLServer: predict_proba; "
            f"skl2onnx and Triton: probabilities; GET {self.model_url} lists them), "
            "or use --label-mode hard"
        )

    def _probe(self, fallback: list[str] | None) -> None:
        """Ask for ``predict_proba`` (and ``fallback``'s labels) until the server says no."""
        self.outputs = [PROBA_OUTPUT, *(fallback or [])]
        self._fallback = fallback
        self._probing = True

    def _choose_outputs(self, specs: dict[str, dict[str, Any]]) -> None:
        """What to ask for, from the outputs the metadata lists (``--output`` wins)."""
        proba = _pick(specs, PROBA_NAMES, _proba_like)
        label = _pick(specs, LABEL_NAMES, _label_like)
        if self.requested is not None:
            chosen = [n for n in self.requested if n in specs]
            proba = next((n for n in chosen if _proba_like(*_shape_type(specs[n]))), None)
            label = next((n for n in chosen if n != proba), None)
        elif proba is not None:
            self.outputs = [proba] + ([label] if label is not None else [])
            self._probing = False
        elif specs:
            fallback = [label] if label is not None else [next(iter(specs))]
            self.outputs = fallback
            if self.wants_probabilities:
                self._probe(fallback)
        if proba is not None:
            columns = _feature_dims(specs[proba].get("shape"))
            if columns is not None and len(columns) == 1 and columns[0] > 1:
                self.columns_hint = columns[0]
        label_spec = specs.get(label, {}) if label is not None else {}
        self.presume_identity = label_spec.get("datatype") != "BYTES"

    def _describe(self) -> Task | None:
        meta = self._metadata(self.model_url)
        if not isinstance(meta, dict):
            return None
        specs = {
            o["name"]: o
            for o in (meta.get("outputs") if isinstance(meta.get("outputs"), list) else [])
            if isinstance(o, dict) and isinstance(o.get("name"), str)
        }
        self._choose_outputs(specs)
        inputs = meta.get("inputs")
        first = inputs[0] if isinstance(inputs, list) and inputs else None
        if not isinstance(first, dict):
            return None
        if self.input_name is None and isinstance(first.get("name"), str):
            self.input_name = first["name"]
        datatype = first.get("datatype")
        if not self.datatype_given and isinstance(datatype, str):
            if datatype not in DTYPES:
                raise OracleError(
                    f"{self.target} takes {datatype} inputs; give a numeric --datatype "
                    f"({', '.join(DATATYPES)})"
                )
            self.datatype = datatype
        dims = _feature_dims(first.get("shape"))
        if dims is None:
            return None
        self.input_dims = dims
        task = described_task(self.model_name, math.prod(dims))
        if len(dims) in (2, 3):
            task = replace(task, image_shape=tuple(dims))
        return task

    def _records(self, X: np.ndarray) -> list[dict[str, Any]]:
        if not self._probing:
            return super()._records(X)
        try:
            records = super()._records(X)
        except AnswerRefused as exc:
            if exc.status not in REFUSED_OUTPUT:
                raise
            self.outputs, self._probing = self._fallback, False
            self.note = f"{self.target} refused the output {PROBA_OUTPUT!r}: {exc}"
            return super()._records(X)
        self._probing = False
        if records and all(r["probabilities"] is None for r in records):
            self.note = f"{self.target} ignored the request for output {PROBA_OUTPUT!r}"
        return records

    def _hint(self, response: Any) -> str:
        hint = super()._hint(response)
        if hint or response.status_code not in (400, 422) or self.datatype_given:
            return hint
        text = response.text.lower()
        if "data type" in text or "datatype" in text:
            other = "FP32" if self.datatype == "FP64" else "FP64"
            return f"sent {self.datatype} inputs; try --datatype {other}"
        return ""

    def _request(self, X: np.ndarray) -> tuple[str, dict[str, Any]]:
        dtype = DTYPES[self.datatype]
        values = X.astype(dtype) if self.datatype.startswith("FP") else np.rint(X).astype(dtype)
        dims = self.input_dims if self.input_dims and len(self.input_dims) > 1 else [X.shape[1]]
        payload: dict[str, Any] = {
            "inputs": [
                {
                    "name": self.input_name or DEFAULT_INPUT,
                    "shape": [len(X), *dims],
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

    def _parse(self, body: Any, n: int) -> list[dict[str, Any]]:
        outputs = body.get("outputs") if isinstance(body, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise OracleError(f"unexpected answer from {self.url}: no 'outputs' list")
        tensors = {}
        for output in outputs:
            name, shape, data = self._tensor(output, n)
            tensors[name] = (shape, data, output.get("datatype"))
        probabilities: list[list[Any]] | None = None
        labels: list[Any] | None = None
        proba = _pick(
            {k: {"shape": s, "datatype": _dt(t, d)} for k, (s, d, t) in tensors.items()},
            PROBA_NAMES,
            _proba_like,
        )
        if proba is not None:
            shape, data, _ = tensors.pop(proba)
            probabilities = self._rows(proba, shape, data, n)
        label = _pick(
            {k: {"shape": s, "datatype": t} for k, (s, d, t) in tensors.items()},
            LABEL_NAMES,
            _label_like,
        )
        if label is not None:
            shape, data, _ = tensors[label]
            labels = self._labels(label, shape, data)
        if labels is None and probabilities is None:
            name, (shape, data, _) = next(iter(tensors.items()))
            labels = self._labels(name, shape, data)
        return checked_answers(n, labels, probabilities)

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
