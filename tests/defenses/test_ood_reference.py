"""A ``reference = "file.npy"`` is read with the tasks' reader: every bad file is a one-line
ConfigError naming it, never a traceback (an empty file was an EOFError, an NPZ archive
under an ``.npy`` name an AttributeError)."""

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modeltheft.defenses.ood import reference_rows
from modeltheft.errors import ConfigError
from modeltheft.tasks import digits_task

GOOD = np.random.default_rng(0).random((20, 64))


def _npz(path: Path) -> None:
    np.savez(path.with_suffix(".npz"), X=GOOD)
    path.write_bytes(path.with_suffix(".npz").read_bytes())


def _truncated(path: Path) -> None:
    np.save(path, GOOD)
    path.write_bytes(path.read_bytes()[:200])


def _with(array: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.save(path, array, allow_pickle=True)


BAD: dict[str, Callable[[Path], None]] = {
    "empty": lambda path: path.write_bytes(b""),
    "npz": _npz,
    "truncated": _truncated,
    "pickle": lambda path: path.write_bytes(pickle.dumps(GOOD)),
    "objects": _with(np.array([[1, None]] * 20, dtype=object)),
    "nan": _with(np.where(GOOD > 0.5, np.nan, GOOD)),
    "one-d": _with(GOOD[0]),
    "complex": _with(GOOD.astype(complex)),
    "few rows": _with(GOOD[:3]),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_reference_file_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "reference.npy"
    BAD[kind](path)
    with pytest.raises(ConfigError) as info:
        reference_rows(str(path), digits_task())
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message


def test_a_good_reference_file_is_read_as_floats(tmp_path: Path) -> None:
    path = tmp_path / "reference.npy"
    np.save(path, (GOOD * 16).astype(np.int64))
    rows = reference_rows(str(path), digits_task())
    assert rows.dtype == float and rows.shape == (20, 64)
    np.save(path, GOOD[:, :10])
    with pytest.raises(ConfigError, match="has 10 features"):
        reference_rows(str(path), digits_task())
