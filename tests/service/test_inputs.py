"""The fast body parser and the pydantic model agree on every body: same rows or same refusal."""

import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from modeltheft.errors import InputError, PayloadTooLarge
from modeltheft.service import inputs
from modeltheft.service.inputs import InputRules
from modeltheft.tasks import get_task

MAX_BATCH = 4
RULES = InputRules.for_task(get_task("digits"), MAX_BATCH)

PIXEL = (
    st.floats(-0.5, 1.5)
    | st.floats()
    | st.integers(-2, 3)
    | st.integers(-(2**70), 2**70)
    | st.booleans()
    | st.none()
    | st.text(max_size=3)
    | st.lists(st.floats(0, 1), max_size=2)
)
VALID_PIXEL = st.floats(0, 1) | st.integers(0, 1)
ROW = st.lists(PIXEL, min_size=62, max_size=66) | st.lists(VALID_PIXEL, min_size=64, max_size=64)
BODY = st.fixed_dictionaries({"inputs": st.lists(ROW, max_size=6)}) | st.dictionaries(
    st.sampled_from(["inputs", "extra", "Inputs"]), st.lists(ROW, max_size=2), max_size=2
)


def outcome(parse, body: bytes) -> object:
    try:
        return parse(body).tolist()
    except PayloadTooLarge:
        return "413"
    except InputError:
        return "422"


def slow(body: bytes, rules: InputRules = RULES) -> np.ndarray:
    rows = inputs._slow(body, rules)
    inputs.check_bounds(rows, rules)
    return rows


def fast(body: bytes, rules: InputRules = RULES) -> np.ndarray:
    return inputs.parse_inputs(body, rules)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(BODY, st.booleans())
@example({"inputs": [[True] + [0.5] * 63]}, False)
@example({"inputs": [[1] * 64, [0] * 64]}, False)
@example({"inputs": [[0.5] * 64] * 5}, False)
def test_fast_path_agrees_with_pydantic(body: dict, nan_tokens: bool) -> None:
    try:
        raw = json.dumps(body, allow_nan=nan_tokens).encode()
    except ValueError:  # NaN or infinity without the tokens: send it as a huge literal
        raw = json.dumps(body, allow_nan=True).replace("Infinity", "1e999").encode()
        raw = raw.replace(b"NaN", b"-1e999")
    expected = "413" if raw.count(b"[") > MAX_BATCH + 1 else outcome(slow, raw)
    assert outcome(fast, raw) == expected


def test_too_many_rows_are_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(inputs.orjson, "loads", refuse)
    monkeypatch.setattr(inputs, "_slow", refuse)
    body = json.dumps({"inputs": [[0.5] * 64] * (MAX_BATCH + 1)}).encode()
    with pytest.raises(PayloadTooLarge, match=f"more than {MAX_BATCH} rows"):
        inputs.parse_inputs(body, RULES)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": [["0.5"' + b", 0.5" * 63 + b"]]}",
        b'{"inputs": [[1e400' + b", 0.5" * 63 + b"]]}",
        b'{"inputs": [[NaN' + b", 0.5" * 63 + b"]]}",
        b'{"inputs": [[0.5' + b", 0.5" * 63 + b']], "inputs": []}',
        b'{"inputs": [[0.5' + b", 0.5" * 63 + b"]]",
        b"[]",
        b"",
        b'{"inputs": {"0": 1}}',
        b'\xef\xbb\xbf{"inputs": [[0.5' + b", 0.5" * 63 + b"]]}",
    ],
)
def test_awkward_bodies_agree(raw: bytes) -> None:
    assert outcome(fast, raw) == outcome(slow, raw)


def test_valid_rows_take_the_fast_path_and_are_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("the slow path was taken")

    monkeypatch.setattr(inputs, "_slow", refuse)
    rows = inputs.parse_inputs(json.dumps({"inputs": [[0.25] * 64, [1] * 64]}).encode(), RULES)
    assert rows.shape == (2, 64) and rows.dtype == np.float64 and not rows.flags.writeable


WINE = get_task("wine")
WINE_RULES = InputRules.for_task(WINE, MAX_BATCH)
WINE_ROW = st.lists(
    st.floats(-10, 2000) | st.integers(-5, 2000) | st.none(),
    min_size=WINE.n_features - 1,
    max_size=WINE.n_features + 1,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({"inputs": st.lists(WINE_ROW, max_size=5)}))
@example({"inputs": [WINE.data.X_eval[0].tolist()]})
def test_both_paths_agree_on_a_task_with_per_feature_bounds(body: dict) -> None:
    raw = json.dumps(body).encode()
    expected = (
        "413" if raw.count(b"[") > MAX_BATCH + 1 else outcome(lambda b: slow(b, WINE_RULES), raw)
    )
    assert outcome(lambda b: fast(b, WINE_RULES), raw) == expected


def test_the_width_message_names_the_models_width() -> None:
    body = json.dumps({"inputs": [[1.0] * 64]}).encode()
    with pytest.raises(InputError, match=r"inputs\[0\]: expected 13 values .*input width.*got 64"):
        inputs.parse_inputs(body, WINE_RULES)


def test_a_value_outside_its_bounds_names_the_feature() -> None:
    row = WINE.data.X_eval[0].copy()
    row[2] = WINE.upper[2] + 1  # ash
    body = json.dumps({"inputs": [WINE.data.X_eval[1].tolist(), row.tolist()]}).encode()
    with pytest.raises(
        InputError, match=r"inputs\[1\]\[2\] \(ash\): .* outside .* bounds \[1\.36, 3\.23\]"
    ):
        inputs.parse_inputs(body, WINE_RULES)
    rows = inputs.parse_inputs(
        json.dumps({"inputs": [WINE.data.X_eval[1].tolist()]}).encode(), WINE_RULES
    )
    assert np.array_equal(rows[0], WINE.data.X_eval[1])
