"""The ``POST /v1/predict`` body parser: a fast path for valid bodies, pydantic for the rest.

Validating every float of every row through pydantic costs more than the model call, so a
body is first read with orjson and checked as one NumPy array (shape, number types, finite).
Anything the fast path is not sure of — a JSON literal ``true``/``false``/``null`` anywhere,
strings, odd nesting, a wrong width — is handed to the pydantic model built for the task,
which accepts exactly the same bodies and words the error (``inputs[1]: expected 30
values…``). Both paths then check the task's finite bounds with one vectorised test
(:func:`check_bounds`), whose message names the feature.
``tests/service/test_inputs.py`` checks that both paths agree on arbitrary bodies.
"""

from dataclasses import dataclass

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from modeltheft.errors import InputError, PayloadTooLarge
from modeltheft.service.schemas import request_model
from modeltheft.tasks import Task

# A JSON literal the fast path must not read as a number (numpy would take True as 1.0).
_LITERALS = (b"true", b"false", b"null")


@dataclass(frozen=True, eq=False)
class InputRules:
    """What a row must be for one served task: its width, its finite bounds, the body model."""

    width: int
    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    bounded: bool
    """Whether any bound is finite (else the bounds check is skipped)."""
    body: type[BaseModel]
    max_batch: int

    @classmethod
    def for_task(cls, task: Task, max_batch: int) -> "InputRules":
        """The rules of ``task``'s rows, in batches of at most ``max_batch``."""
        lower, upper = np.asarray(task.lower), np.asarray(task.upper)
        return cls(
            width=task.n_features,
            names=task.feature_names,
            lower=lower,
            upper=upper,
            bounded=bool(np.isfinite(lower).any() or np.isfinite(upper).any()),
            body=request_model(max_batch, task),
            max_batch=max_batch,
        )


def parse_inputs(body: bytes, rules: InputRules) -> np.ndarray:
    """The rows of ``{"inputs": [[d numbers], ...]}`` as a read-only float array.

    Raises :class:`PayloadTooLarge` beyond ``rules.max_batch`` rows (counted before parsing,
    as brackets) and :class:`InputError` naming the problem for anything else: what the
    task's pydantic body rejects, or a value outside its feature's bounds.
    """
    max_batch = rules.max_batch
    if body.count(b"[") > max_batch + 1:
        # Checked before parsing: a valid body holds no strings, so every "[" opens the list
        # of rows or one row, and this many cannot be a batch within the limit.
        raise PayloadTooLarge(f"batch has more than {max_batch} rows (the limit of this server)")
    rows = _fast(body, rules)
    if rows is None:
        rows = _slow(body, rules)
    check_bounds(rows, rules)
    rows.flags.writeable = False
    return rows


def check_bounds(rows: np.ndarray, rules: InputRules) -> None:
    """An InputError naming the first value outside its feature's finite bounds."""
    if not rules.bounded:
        return
    outside = (rows < rules.lower) | (rows > rules.upper)
    if not outside.any():
        return
    i, j = (int(v) for v in np.argwhere(outside)[0])
    raise InputError(
        f"inputs[{i}][{j}] ({rules.names[j]}): {rows[i, j]:g} is outside the feature's bounds "
        f"[{rules.lower[j]:g}, {rules.upper[j]:g}]"
    )


def _fast(body: bytes, rules: InputRules) -> np.ndarray | None:
    if any(literal in body for literal in _LITERALS):
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or len(data) != 1 or "inputs" not in data:
        return None
    inputs = data["inputs"]
    if type(inputs) is not list or not 1 <= len(inputs) <= rules.max_batch:
        return None
    try:
        rows = np.array(inputs)
    except (ValueError, TypeError, OverflowError):
        return None
    if rows.ndim != 2 or rows.shape[1] != rules.width or rows.dtype.kind not in "fi":
        return None
    rows = rows.astype(np.float64, copy=False)
    if not np.isfinite(rows).all():
        return None
    return rows


def _slow(body: bytes, rules: InputRules) -> np.ndarray:
    try:
        parsed = rules.body.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        for error in errors:
            if error.get("type") == "too_long" and tuple(error.get("loc", ())) == ("inputs",):
                raise PayloadTooLarge(
                    f"batch has more than {rules.max_batch} rows (the limit of this server)"
                ) from None
        shown = "; ".join(_describe(e, rules.width) for e in errors[:3])
        more = f" (and {len(errors) - 3} more problems)" if len(errors) > 3 else ""
        raise InputError(shown + more) from None
    return np.array(parsed.inputs, dtype=np.float64)  # type: ignore[attr-defined]


def _describe(error: dict, width: int) -> str:
    loc = tuple(error.get("loc", ()))
    where = "".join(
        f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc)
    )
    message = error.get("msg", "invalid value")
    kind = error.get("type")
    if kind == "json_invalid":
        return f"invalid JSON: {error.get('ctx', {}).get('error', message)}"
    if kind == "model_type":
        return f'body must be a JSON object {{"inputs": [[{width} numbers], ...]}}'
    if kind in ("too_short", "too_long") and len(loc) == 2 and loc[0] == "inputs":
        got = error.get("ctx", {}).get("actual_length")
        shown = f", got {got}" if got is not None else ""
        return f"{where}: expected {width} values (the model's input width){shown}"
    return f"{where}: {message}" if where else message
