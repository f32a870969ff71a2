"""Rows stored compactly: one list item per request, deflated, lossless.

Detectors keep a client's rows in the state store (PRADA's growing sets, the stream test's
counted rows). One item per row cost ~600 B a query in SQLite (issue 14: float64 bytes plus
the item's key and index); one deflated item per request costs ~60 B a row on digits and
never changes a value, so every statistic stays what it was.

An item made here starts with :data:`MARK` and its length is 7 more than a multiple of 8:
items written before (a row's float64 bytes, alone or after a 1- or 4-byte class index) are
0, 1 or 4 more, so both kinds read from one list.
"""

import struct
import zlib

import numpy as np

MARK = b"\xfe"
_HEADER = struct.Struct(">IIB")  # rows, width, whether class indexes follow


def pack(rows: np.ndarray, labels: np.ndarray | None = None) -> bytes:
    """``rows`` (n, width) as float64, with their class indexes if given, in one item."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    n, width = rows.shape
    body = _HEADER.pack(n, width, labels is not None)
    if labels is not None:
        body += np.asarray(labels, dtype=">i4").tobytes()
    item = MARK + zlib.compress(body + rows.tobytes(), 6)
    return item + b"\x00" * ((7 - len(item)) % 8)  # deflate ignores what follows its end


def is_packed(item: bytes) -> bool:
    """Whether ``item`` was made by :func:`pack` (not an older one-row item)."""
    return item[:1] == MARK and len(item) % 8 == 7


def unpack(item: bytes) -> tuple[np.ndarray | None, np.ndarray]:
    """The class indexes (None if packed without) and the (n, width) rows of a packed item."""
    body = zlib.decompressobj().decompress(item[1:])
    n, width, has_labels = _HEADER.unpack_from(body)
    offset = _HEADER.size
    labels = None
    if has_labels:
        labels = np.frombuffer(body, dtype=">i4", count=n, offset=offset).astype(np.int64)
        offset += 4 * n
    rows = np.frombuffer(body, dtype=np.float64, count=n * width, offset=offset)
    return labels, rows.reshape(n, width)
