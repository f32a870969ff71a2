"""The ``POST /v1/predict`` body parser: a fast path for valid bodies, pydantic for the rest.

Validating 64 constrained floats per row through pydantic costs more than the model call, so
a body is first read with orjson and checked as one NumPy array (shape, number types, finite,
in [0, 1]). Anything the fast path is not sure of — a JSON literal ``true``/``false``/``null``
anywhere, strings, odd nesting, a value out of range — is handed to the pydantic model, which
accepts exactly the same bodies and words the error (``inputs[1]: List should have…``).
``tests/service/test_inputs.py`` checks that both paths agree on arbitrary bodies.
"""

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from modeltheft.data import N_FEATURES
from modeltheft.errors import InputError, PayloadTooLarge

# A JSON literal the fast path must not read as a number (numpy would take True as 1.0).
_LITERALS = (b"true", b"false", b"null")


def parse_inputs(body: bytes, max_batch: int, model: type[BaseModel]) -> np.ndarray:
    """The rows of ``{"inputs": [[64 numbers in [0, 1]], ...]}`` as a read-only float array.

    Raises :class:`PayloadTooLarge` beyond ``max_batch`` rows (counted before parsing, as
    brackets) and :class:`InputError` naming the problem for anything else that ``model`` (the
    server's pydantic body) rejects.
    """
    if body.count(b"[") > max_batch + 1:
        # Checked before parsing: a valid body holds no strings, so every "[" opens the list
        # of rows or one row, and this many cannot be a batch within the limit.
        raise PayloadTooLarge(f"batch has more than {max_batch} rows (the limit of this server)")
    rows = _fast(body, max_batch)
    if rows is None:
        rows = _slow(body, max_batch, model)
    rows.flags.writeable = False
    return rows


def _fast(body: bytes, max_batch: int) -> np.ndarray | None:
    if any(literal in body for literal in _LITERALS):
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or len(data) != 1 or "inputs" not in data:
        return None
    inputs = data["inputs"]
    if type(inputs) is not list or not 1 <= len(inputs) <= max_batch:
        return None
    try:
        rows = np.array(inputs)
    except (ValueError, TypeError, OverflowError):
        return None
    if rows.ndim != 2 or rows.shape[1] != N_FEATURES or rows.dtype.kind not in "fi":
        return None
    rows = rows.astype(np.float64, copy=False)
    if not (np.isfinite(rows).all() and rows.min() >= 0.0 and rows.max() <= 1.0):
        return None
    return rows


def _slow(body: bytes, max_batch: int, model: type[BaseModel]) -> np.ndarray:
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        for error in errors:
            if error.get("type") == "too_long" and tuple(error.get("loc", ())) == ("inputs",):
                raise PayloadTooLarge(
                    f"batch has more than {max_batch} rows (the limit of this server)"
                ) from None
        shown = "; ".join(_describe(e) for e in errors[:3])
        more = f" (and {len(errors) - 3} more problems)" if len(errors) > 3 else ""
        raise InputError(shown + more) from None
    return np.array(parsed.inputs, dtype=np.float64)  # type: ignore[attr-defined]


def _describe(error: dict) -> str:
    loc = error.get("loc", ())
    where = "".join(
        f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc)
    )
    message = error.get("msg", "invalid value")
    if error.get("type") == "json_invalid":
        return f"invalid JSON: {error.get('ctx', {}).get('error', message)}"
    if error.get("type") == "model_type":
        return 'body must be a JSON object {"inputs": [[64 numbers], ...]}'
    return f"{where}: {message}" if where else message
