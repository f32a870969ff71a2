"""Keyed, deterministic per-query choices: the same query gets the same answer, in every worker."""

import hashlib
import hmac

import numpy as np


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
