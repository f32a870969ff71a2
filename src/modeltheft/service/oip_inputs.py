"""Request bodies of the Open Inference Protocol v2 and KServe v1 routes, parsed and checked.

``POST /v2/models/{name}/infer`` takes one input tensor of shape ``[n, width]`` (or ``[n,
...]`` whose trailing dimensions multiply to the width) in FP32, FP64 or an integer datatype,
its ``data`` flat (as the protocol says) or nested, in JSON or in the binary tensor extension
(``Inference-Header-Content-Length``, as ``tritonclient`` sends by default). Every problem is
an :class:`~modeltheft.errors.InputError` naming it (422), a batch over the limit a
:class:`~modeltheft.errors.PayloadTooLarge` (413); the rows then get the same bounds check as
``/v1/predict``'s (:func:`~modeltheft.service.inputs.check_bounds`).
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modeltheft.errors import InputError, PayloadTooLarge
from modeltheft.service.inputs import InputRules, check_bounds, parse_inputs

LABEL_OUTPUT = "predict"  # MLServer's scikit-learn runtime names its outputs like this
PROBA_OUTPUT = "predict_proba"
OUTPUTS = (LABEL_OUTPUT, PROBA_OUTPUT)
DEFAULT_OUTPUTS = (LABEL_OUTPUT,)
"""As MLServer's scikit-learn runtime: without ``outputs`` in the request, labels only."""
INPUT_NAME = "input-0"
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(kind)
    for name, kind in {
        "FP64": "<f8",
        "FP32": "<f4",
        "INT64": "<i8",
        "INT32": "<i4",
        "INT16": "<i2",
        "INT8": "i1",
        "UINT64": "<u8",
        "UINT32": "<u4",
        "UINT16": "<u2",
        "UINT8": "u1",
    }.items()
}
BINARY_HEADER = "inference-header-content-length"


@dataclass(frozen=True)
class InferRequest:
    """A checked ``infer`` request: the rows (float64), the outputs asked for, the request id."""

    rows: np.ndarray
    outputs: tuple[str, ...]
    id: str | None
    explicit_outputs: bool


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if b"NaN" in raw or b"Infinity" in raw:
            raise InputError("invalid JSON: NaN and Infinity are not JSON numbers") from None
        raise InputError(f"invalid JSON: {exc}") from None


def _split_binary(body: bytes, header: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a body (all JSON without the header)."""
    if header is None:
        return body, b""
    if not header.strip().isdigit() or int(header) > len(body):
        raise InputError(
            f"Inference-Header-Content-Length must be a byte count within the body of "
            f"{len(body)} bytes, got {header!r}"
        )
    size = int(header)
    return body[:size], body[size:]


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if all(not isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _shape(tensor: dict[str, Any], rules: InputRules) -> tuple[int, int]:
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) < 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise InputError(
            f"inputs[0].shape must be [n, {rules.width}] with n >= 1 rows, got {shape!r}"
        )
    n, width = shape[0], math.prod(shape[1:])
    if width != rules.width:
        raise InputError(
            f"inputs[0].shape {shape} gives rows of {width} values, expected {rules.width} "
            "(the model's input width)"
        )
    if n > rules.max_batch:
        raise PayloadTooLarge(f"batch has {n} rows, more than {rules.max_batch} (the limit)")
    return n, width


def _values(
    tensor: dict[str, Any], datatype: str, binary: bytes, count: int, plain: bool
) -> np.ndarray:
    """The ``count`` values of ``tensor`` as float64 (via its datatype), or an InputError.

    ``plain``: the JSON holds no ``true``/``false`` (which NumPy would read as 1 and 0).
    """
    dtype = DTYPES[datatype]
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or size != len(binary) or size != count * dtype.itemsize:
            raise InputError(
                f"inputs[0].parameters.binary_data_size is {size!r}: expected {count} "
                f"{datatype} values ({count * dtype.itemsize} bytes) and got {len(binary)} bytes"
            )
        return np.frombuffer(binary, dtype=dtype).astype(np.float64)
    if "data" not in tensor:
        raise InputError("inputs[0] has no 'data'")
    flat = _flatten(tensor["data"])
    if len(flat) != count:
        raise InputError(f"inputs[0] has {len(flat)} values in 'data', its shape says {count}")
    try:
        values = np.array(flat)
    except (ValueError, TypeError, OverflowError):
        values = np.array([], dtype=object)
    if values.dtype.kind not in "fi" or len(values) != count or not plain:
        # Rare: find the culprit (a string, null, a list, true/false, a huge integer).
        for v in flat:
            if (type(v) is not float and type(v) is not int) or abs(v) > 1e300:
                shown = orjson.dumps(v).decode()[:40] if type(v) is not int else "a huge integer"
                raise InputError(f"inputs[0].data holds {shown}, not a number")
        values = np.array(flat, dtype=np.float64)
    values = values.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise InputError("inputs[0].data holds a value that is not finite")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        outside = values.min() < info.min or values.max() > info.max
        if outside or not (values == np.round(values)).all():
            raise InputError(f"inputs[0].data holds values that are not {datatype} integers")
        return values
    return values.astype(dtype).astype(np.float64)  # FP32 data means what FP32 holds


def _outputs(body: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    asked = body.get("outputs")
    if asked is None or asked == []:
        return DEFAULT_OUTPUTS, False
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise InputError('outputs must be a list of {"name": ...} objects')
    names: list[str] = []
    for output in asked:
        name = output.get("name")
        if not isinstance(name, str) or name not in OUTPUTS:
            raise InputError(
                f"unknown output {name!r}: this model has the outputs "
                f"{LABEL_OUTPUT!r} (labels) and {PROBA_OUTPUT!r} (probabilities)"
            )
        if name not in names:
            names.append(name)
    return tuple(names), True


def parse_infer(body: bytes, binary_header: str | None, rules: InputRules) -> InferRequest:
    """The rows, outputs and id of an OIP v2 ``infer`` body; InputError naming any problem."""
    head, binary = _split_binary(body, binary_header)
    request = _json(head)
    if not isinstance(request, dict):
        raise InputError('body must be a JSON object {"inputs": [{"name", "shape", ...}]}')
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"id must be a string, got {orjson.dumps(request_id).decode()[:40]}")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError("inputs must be a non-empty list of tensors")
    if len(inputs) != 1:
        raise InputError(f"this model takes one input tensor, got {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InputError("inputs[0] must be a tensor object {name, shape, datatype, data}")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:  # a list or object: no hash
        raise InputError(
            f"inputs[0].datatype {datatype!r} is not supported: send FP32 or FP64 "
            f"(or {', '.join(d for d in DTYPES if not d.startswith('FP'))})"
        )
    n, width = _shape(tensor, rules)
    plain = b"true" not in head and b"false" not in head
    rows = _values(tensor, datatype, binary, n * width, plain).reshape(n, width)
    check_bounds(rows, rules)
    rows.flags.writeable = False
    outputs, explicit = _outputs(request)
    return InferRequest(rows, outputs, request_id, explicit)


def parse_instances(body: bytes, rules: InputRules) -> np.ndarray:
    """The rows of a KServe v1 ``{"instances": [[...], ...]}`` body (checked as /v1/predict's)."""
    request = _json(body)
    if not isinstance(request, dict) or set(request) != {"instances"}:
        raise InputError('body must be a JSON object {"instances": [[numbers], ...]}')
    try:
        return parse_inputs(orjson.dumps({"inputs": request["instances"]}), rules)
    except InputError as exc:
        message = str(exc).replace("inputs", "instances")
        raise type(exc)(message) from None
