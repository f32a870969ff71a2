"""Keyed, deterministic per-query choices: the same query gets the same answer, in every worker."""

import hashlib
import hmac

import numpy as np


def canonical(X: np.ndarray, resolution: np.ndarray | float | None = None) -> np.ndarray:
    """The canonical form of rows, on which every keyed choice is made.

    Each value is rounded to float32, then to the nearest multiple of its column's
    ``resolution`` (0 or None: no grid), and ``-0.0`` becomes ``0.0``; so a ``-0.0`` twin, a
    float32 round-trip and a near-twin within the task's precision all share one canonical
    row (a grid cell's edge still separates two values a hair apart on either side of it).
    """
    Z = np.asarray(X, dtype=np.float64).astype(np.float32).astype(np.float64)
    if resolution is not None:
        grid, safe = _grid(resolution, Z.shape[-1])
        if grid is None:  # every column on a grid (one request's row: few NumPy calls)
            Z /= safe
            np.rint(Z, out=Z)  # np.round with 0 decimals, without its dispatch wrapper
            Z *= safe
        elif grid.any():
            Z = np.where(grid, np.round(Z / safe) * safe, Z)
    Z += 0.0  # -0.0 + 0.0 is 0.0
    return Z


_GRIDS: dict[tuple[bytes, int], tuple[np.ndarray | None, np.ndarray]] = {}


def _grid(resolution: np.ndarray | float, width: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The columns on a grid (None: all of them) and their steps (1 elsewhere), per
    resolution: a task's is the same for every request (a few entries kept)."""
    steps = np.asarray(resolution, dtype=np.float64)
    key = (steps.tobytes(), width)
    held = _GRIDS.get(key)
    if held is None:
        step = np.broadcast_to(steps, (width,))
        grid = step > 0
        safe = np.where(grid, step, 1.0)
        held = (None if grid.all() else grid, safe)
        if len(_GRIDS) >= 16:
            _GRIDS.pop(next(iter(_GRIDS)))
        _GRIDS[key] = held
    return held


def row_digests(key: bytes, X: np.ndarray) -> list[bytes]:
    """HMAC-SHA256 of each row's float64 bytes."""
    rows = np.ascontiguousarray(X, dtype=np.float64)
    return [hmac.new(key, row.tobytes(), hashlib.sha256).digest() for row in rows]


def unit_interval(digests: list[bytes], offset: int = 0) -> np.ndarray:
    """A number in [0, 1) from 8 bytes of each digest, starting at ``offset``."""
    return np.array(
        [int.from_bytes(d[offset : offset + 8], "big") / 2.0**64 for d in digests], dtype=float
    )


def choose(digest: bytes, n: int, offset: int = 8) -> int:
    """An index in ``range(n)`` drawn from 8 bytes of ``digest``."""
    return int.from_bytes(digest[offset : offset + 8], "big") % n


def label_prefix(label: int) -> bytes:
    """A class index before a row's float64 bytes: one byte below 256, else four.

    The two widths are told apart by the record's length (1 or 4 more than a multiple of 8),
    so records written before wide labels existed read as they always did.
    """
    return bytes([label]) if 0 <= label < 256 else int(label).to_bytes(4, "big")


def split_label(item: bytes) -> tuple[int, bytes]:
    """The class index and the row bytes of a record made with :func:`label_prefix`."""
    if len(item) % 8 == 4:
        return int.from_bytes(item[:4], "big"), item[4:]
    return item[0], item[1:]
