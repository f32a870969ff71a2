"""A worker's copy of one client's PRADA state, and the forms PRADA stores it in.

:class:`~modeltheft.defenses.detection.Prada` keeps three lists per client in the state store:
its records (one fixed-size struct a query: class, flags, distance, row digest), the rows of
its growing sets (one packed item a request, :mod:`~modeltheft.defenses.rowpack`) and its
bases (where the windows start, the thresholds before them). A worker mirrors them in a
:class:`PradaClient` held in NumPy arrays, ~30 B a record: as Python objects (a tuple, a
digest and a dict entry each) a record cost ~200 B, so the 6 MiB a stage may keep in a worker
held two clients with full windows, and with a few dozen active clients every request read
its client's whole history back from the store (issue 14). A client read back is rebuilt in a
few vectorised steps.
"""

import math
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from modeltheft.defenses.keyed import split_label
from modeltheft.defenses.rowpack import is_packed, unpack

RECORD = struct.Struct(">BBd8s")  # class, flags, distance, digest of the row
WIDE_RECORD = struct.Struct(">IBd8s")  # the same for a class index of 256 or more
OLD_RECORD = struct.Struct(">BBd")  # before repeats were recognised: no digest
_FORMS = {
    RECORD.size: np.dtype(
        [("label", "u1"), ("flags", "u1"), ("distance", ">f8"), ("digest", ">u8")]
    ),
    WIDE_RECORD.size: np.dtype(
        [("label", ">u4"), ("flags", "u1"), ("distance", ">f8"), ("digest", ">u8")]
    ),
    OLD_RECORD.size: np.dtype([("label", "u1"), ("flags", "u1"), ("distance", ">f8")]),
}
_STRUCTS = {form.size: form for form in (RECORD, WIDE_RECORD, OLD_RECORD)}
_FEW = 8
"""Up to this many records are folded one by one (:meth:`PradaClient._fold_few`)."""
JOINED, REPEAT = 1, 2


def record(label: int, flags: int, distance: float, digest: bytes) -> bytes:
    """One query's stored record."""
    return (RECORD if label < 256 else WIDE_RECORD).pack(label, flags, distance, digest)


def digest_numbers(digests: Sequence[bytes]) -> np.ndarray:
    """8-byte row digests as unsigned integers (big-endian, as records store them)."""
    return np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)


def read_records(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classes, flags, distances and digests (0 for an old record without one) of ``items``.

    Items of one form (the usual case) are read in one step; a mix, item by item."""
    sizes = {len(item) for item in items}
    if len(sizes) == 1 and (size := sizes.pop()) in _FORMS:
        table = np.frombuffer(b"".join(items), dtype=_FORMS[size])
        digests = (
            table["digest"].astype(np.uint64)
            if size != OLD_RECORD.size
            else np.zeros(len(items), dtype=np.uint64)
        )
        return (
            table["label"].astype(np.int64),
            table["flags"].astype(np.int64),
            table["distance"].astype(np.float64),
            digests,
        )
    fields = [_fields(item) for item in items]
    labels, flags, distances, digests = zip(*fields, strict=True) if fields else ((),) * 4
    return (
        np.array(labels, dtype=np.int64),
        np.array(flags, dtype=np.int64),
        np.array(distances, dtype=np.float64),
        np.array(digests, dtype=np.uint64),
    )


def _fields(item: bytes) -> tuple[int, int, float, int]:
    """Class, flags, distance and digest (0 for an old record) of one stored record; an item
    of no form fails as a ``RECORD`` (``struct.error``)."""
    label, flags, distance, *digest = _STRUCTS.get(len(item), RECORD).unpack(item)
    return label, flags, distance, int.from_bytes(digest[0], "big") if digest else 0


def oldest_to_drop(counts: Sequence[int], held: int, keep: int) -> tuple[int, int]:
    """How many of the oldest items (``counts``: rows each, oldest first, ``held`` in all)
    can go with at least ``keep`` rows left, and the rows left."""
    gone = 0
    while gone < len(counts) and held - counts[gone] >= keep:
        held -= counts[gone]
        gone += 1
    return gone, held


class Rows:
    """A growing set of rows appended in place (amortised O(1)), each with a position (the
    list item it came from); rows before a window's start are dropped by :meth:`drop_before`.

    With ``compact``, rows are held in the narrowest of int8, float16, float32 and float64 that
    holds every row added exactly (digits' pixels fit int8: an eighth of the bytes, and
    widened to float64 faster than float16 is), widened when a row needs it:
    values and distances stay those of float64 rows, only the memory shrinks.
    """

    def __init__(self, width: int, compact: bool = True) -> None:
        self._data = np.empty((8, width), dtype=np.int8 if compact else np.float64)
        self._where = np.empty(8, dtype=np.int64)
        self._lo = 0
        self._hi = 0
        self.nbytes = int(self._data.nbytes + self._where.nbytes)
        """Bytes of the arrays (they only change when they grow)."""

    @property
    def n(self) -> int:
        """Rows held."""
        return self._hi - self._lo

    def _make_room(self, rows: np.ndarray) -> None:
        """Room for ``rows`` (widening the storage if one is not exact in it)."""
        dtype = self._data.dtype
        if dtype != np.float64 and not _exact(rows, dtype):
            wider = _WIDER[_WIDER.index(dtype) + 1 :]
            dtype = next((t for t in wider[:-1] if _exact(rows, t)), wider[-1])
        n = len(rows)
        if self._hi + n <= len(self._data) and dtype == self._data.dtype:
            return
        live = slice(self._lo, self._hi)
        grown = max(8, self.n + n + (self.n + n) // 4)  # 25% spare: amortised O(1), little slack
        size = grown if self._hi + n > len(self._data) else len(self._data)
        data = np.empty((size, self._data.shape[1]), dtype=dtype)
        wh = np.empty(size, dtype=np.int64)
        data[: self.n], wh[: self.n] = self._data[live], self._where[live]
        self._data, self._where, self._hi, self._lo = data, wh, self.n, 0
        self.nbytes = int(data.nbytes + wh.nbytes)

    def extend(self, rows: np.ndarray, where: np.ndarray) -> None:
        """Add ``rows`` (n, width), each at its position in ``where`` (ascending, after those
        held)."""
        self._make_room(rows)
        n = len(rows)
        self._data[self._hi : self._hi + n] = rows
        self._where[self._hi : self._hi + n] = where
        self._hi += n

    def drop_before(self, where: int) -> None:
        """Drop the rows whose position is below ``where``."""
        self._lo += int(np.searchsorted(self._where[self._lo : self._hi], where, side="left"))

    def held(self) -> np.ndarray:
        """The rows held, oldest first, as float64 (a copy if held narrower)."""
        rows = self._data[self._lo : self._hi]
        return rows if rows.dtype == np.float64 else rows.astype(np.float64)

    def keep_last(self, n: int) -> None:
        """Drop all but the newest ``n`` rows."""
        self._lo = max(self._lo, self._hi - n)

    def nearest(self, row: np.ndarray) -> float:
        """Squared L2 distance from ``row`` to the nearest row of the set (in float64)."""
        diff = self._data[self._lo : self._hi] - np.asarray(row, dtype=np.float64)
        return float(np.einsum("ij,ij->i", diff, diff).min())


_WIDER = [np.dtype(t) for t in (np.int8, np.float16, np.float32, np.float64)]
"""The dtypes :class:`Rows` holds, narrowest first (each holds every value of those before)."""


def _exact(rows: np.ndarray, dtype: "np.dtype | type") -> bool:
    """Whether every value of ``rows`` is the same in ``dtype`` (NaN stays NaN; for an integer
    dtype, -0.0 and NaN are not)."""
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = rows.astype(dtype)
    if narrow.dtype.kind == "i":  # compare the bits of the values back: -0.0 is not 0
        return narrow.astype(rows.dtype).tobytes() == np.ascontiguousarray(rows).tobytes()
    if (narrow == rows).all():  # most rows: three NumPy calls, not array_equal's NaN checks
        return True
    return bool(np.array_equal(narrow, rows, equal_nan=True))


def read_rows(item: bytes, labelled: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """The class indexes (if ``labelled``) and rows of one stored item, packed or one row."""
    if is_packed(item):
        return unpack(item)
    if labelled:
        label, payload = split_label(item)
        return np.array([label]), np.frombuffer(payload, dtype=np.float64)[None, :]
    return None, np.frombuffer(item, dtype=np.float64)[None, :]


@dataclass(frozen=True)
class Threshold:
    """Running mean and variance (Welford) of a growing set's distances, and its threshold."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    value: float = 0.0

    def plus(self, distance: float) -> "Threshold":
        n = self.n + 1
        delta = distance - self.mean
        mean = self.mean + delta / n
        m2 = self.m2 + delta * (distance - mean)
        value = self.value
        if n > 1:
            value = max(value, mean - math.sqrt(max(m2 / n, 0.0)))
        return Threshold(n, mean, m2, value)


_BASE = struct.Struct(">qqqI")  # records_from, upto, rows_from, classes
_BASE_CLASS = struct.Struct(">qqddd")  # label, n, mean, m2, value


@dataclass(frozen=True)
class Base:
    """Where a client's windows start, and the thresholds of every record before ``upto``.

    Written when a window is moved, so that the records trimmed away still count in the
    thresholds of every worker that reads the client afresh.
    """

    records_from: int = 0
    upto: int = 0
    rows_from: int = 0
    thresholds: dict[int, Threshold] = field(default_factory=dict)

    def encode(self) -> bytes:
        out = _BASE.pack(self.records_from, self.upto, self.rows_from, len(self.thresholds))
        for label, t in sorted(self.thresholds.items()):
            out += _BASE_CLASS.pack(label, t.n, t.mean, t.m2, t.value)
        return out

    @classmethod
    def decode(cls, item: bytes) -> "Base":
        records_from, upto, rows_from, k = _BASE.unpack_from(item)
        thresholds = {}
        for i in range(k):
            label, *values = _BASE_CLASS.unpack_from(item, _BASE.size + i * _BASE_CLASS.size)
            thresholds[int(label)] = Threshold(*values)
        return cls(records_from, upto, rows_from, thresholds)


class Digests:
    """The row digests of the records kept, in record order (0: an old record without one);
    added at the end, dropped from the front as the window moves."""

    def __init__(self) -> None:
        self._data = np.empty(16, dtype=np.uint64)
        self._lo = self._hi = 0
        self.first = 0
        """The record index of the oldest digest held."""
        self.nbytes = int(self._data.nbytes)

    def __len__(self) -> int:
        return self._hi - self._lo

    def extend(self, first: int, digests: np.ndarray) -> None:
        """Add the digests of the records from index ``first`` on (right after those held)."""
        if not len(self):
            self._lo = self._hi = 0
            self.first = first
        elif first != self.first + len(self):
            raise ValueError(f"records {self.first + len(self)} on expected, got {first}")
        n = len(digests)
        if self._hi + n > len(self._data):
            live = self._data[self._lo : self._hi]
            data = np.empty(max(16, 2 * (len(live) + n)), dtype=np.uint64)
            data[: len(live)] = live
            self._data, self._lo, self._hi = data, 0, len(live)
            self.nbytes = int(data.nbytes)
        self._data[self._hi : self._hi + n] = digests
        self._hi += n

    def drop_before(self, index: int) -> None:
        """Drop the digests of the records before ``index``."""
        k = min(max(0, index - self.first), len(self))
        self._lo += k
        self.first += k

    def held(self) -> np.ndarray:
        """The digests held, oldest first (a view: read it before the next :meth:`extend`)."""
        return self._data[self._lo : self._hi]

    def contains(self, digests: Sequence[bytes]) -> list[bool]:
        """For each 8-byte row digest, whether a record held has it (0 never matches)."""
        held = self.held()
        if not len(held):  # a new client's first request: nothing to compare with
            return [False] * len(digests)
        if len(digests) == 1:  # most requests: one comparison, no arrays built
            value = int.from_bytes(digests[0], "big")
            return [value != 0 and bool((held == np.uint64(value)).any())]
        numbers = digest_numbers(digests)
        return (np.isin(numbers, held) & (numbers != 0)).tolist()


@dataclass
class PradaClient:
    """A worker's copy of one client's PRADA state, rebuilt from the store's lists in order:
    the records from ``base.records_from`` and the growing sets' rows from
    ``base.rows_from`` (list item indexes), thresholds from the base on."""

    base: Base = field(default_factory=Base)
    base_item: bytes = b""
    """The stored form of ``base`` (b"": none stored): an unchanged one is not decoded again."""
    growing: dict[int, Rows] = field(default_factory=dict)
    thresholds: dict[int, Threshold] = field(default_factory=dict)
    digests: Digests = field(default_factory=Digests)
    """The row digest of each record kept: a row sent again while one is kept is a repeat."""
    d: Rows = field(default_factory=lambda: Rows(1, compact=False))
    """D: the distances of the records kept (one-column rows, each with its record index)."""
    row_counts: array = field(default_factory=lambda: array("I"))
    """Rows of each item of the growing sets kept, oldest first (the last is item
    ``n_rows - 1``; 4 B an item: as a deque of tuples, ~100 B)."""
    held_rows: int = 0
    """Rows of the growing sets kept (the sum over ``row_counts``, kept as it changes)."""
    n_rows: int = 0
    n_records: int = 0
    n_distances: int = 0
    """Distances that ever joined D here (the test's clock)."""
    tested_at: int = 0
    """``n_distances`` when this worker last ran the test."""

    @property
    def nbytes(self) -> int:
        # Arrays at their capacity, ~200 B a class, ~4 KB for the objects themselves
        # (measured with tracemalloc).
        rows = sum([group.nbytes for group in self.growing.values()]) + 200 * len(self.growing)
        rows += self.d.nbytes + self.digests.nbytes + 4 * len(self.row_counts)
        return rows + 200 * len(self.thresholds) + 4000

    @property
    def items_from(self) -> int:
        """The item index of the oldest growing-set item kept."""
        return self.n_rows - len(self.row_counts)

    @property
    def distances(self) -> list[float]:
        """D: the distances of the records kept, oldest first."""
        return self.d.held()[:, 0].tolist()

    def fold(self, first: int, items: Sequence[bytes]) -> None:
        """The stored records ``items`` (record indexes ``first`` on) into D, the digests and
        the thresholds (those from ``base.upto`` on); ``n_records`` moves past them."""
        if not items:
            return
        if len(items) <= _FEW:
            self._fold_few(first, items)
            return
        labels, flags, distances, digests = read_records(items)
        self.digests.extend(first, digests)
        fresh = (flags & REPEAT) == 0
        counted = np.flatnonzero(fresh & (distances > 0))
        if len(counted):
            self.d.extend(distances[counted, None], first + counted)
            self.n_distances += len(counted)
        indexes = first + np.arange(len(items))
        joined = np.flatnonzero(fresh & ((flags & JOINED) != 0) & (indexes >= self.base.upto))
        for i in joined.tolist():  # Welford in order, per class: as each record came
            label = int(labels[i])
            self.thresholds[label] = self.thresholds.get(label, Threshold()).plus(
                float(distances[i])
            )
        self.n_records = first + len(items)

    def _fold_few(self, first: int, items: Sequence[bytes]) -> None:
        """:meth:`fold` for a request's few records, one by one (the same values: NumPy's
        per-call costs outweigh the work for a handful)."""
        fields = [_fields(item) for item in items]  # all read first: a bad one changes nothing
        digests = np.array([digest for *_, digest in fields], dtype=np.uint64)
        distances: list[float] = []
        indexes: list[int] = []
        for offset, (label, flags, distance, _) in enumerate(fields):
            if flags & REPEAT:
                continue
            index = first + offset
            if distance > 0:
                distances.append(distance)
                indexes.append(index)
            if flags & JOINED and index >= self.base.upto:
                self.thresholds[label] = self.thresholds.get(label, Threshold()).plus(distance)
        self.digests.extend(first, digests)
        if distances:
            self.d.extend(np.array(distances)[:, None], np.array(indexes))
            self.n_distances += len(distances)
        self.n_records = first + len(items)

    def add_rows(self, first: int, items: Sequence[tuple[np.ndarray | None, np.ndarray]]) -> None:
        """The growing sets' stored items (item indexes ``first`` on, each as
        :func:`read_rows` gives it) into their classes' sets; ``n_rows`` moves past them."""
        counts = [len(rows) for _, rows in items]
        if counts == [1] and items[0][0] is not None and len(items[0][0]) == 1:
            # One request's one joined row (most calls): the same as below, without the
            # concatenations, the grouping and their NumPy calls.
            label = int(items[0][0][0])
            group = self.growing.get(label)
            if group is None:
                group = self.growing[label] = Rows(items[0][1].shape[1])
            group.extend(items[0][1], np.array([first]))
        elif sum(counts):
            labels = np.concatenate([lab for lab, rows in items if len(rows) and lab is not None])
            rows = np.concatenate([rows for _, rows in items if len(rows)])
            if len(labels) != len(rows):
                raise ValueError("a stored item of a growing set has rows without classes")
            where = np.repeat(first + np.arange(len(items)), counts)
            for label in np.unique(labels).tolist():
                mine = labels == label
                group = self.growing.get(label)
                if group is None:
                    group = self.growing[label] = Rows(rows.shape[1])
                group.extend(rows[mine], where[mine])
        self.row_counts.extend(counts)
        self.held_rows += sum(counts)
        self.n_rows = first + len(items)

    def move(self, base: Base, item: bytes) -> None:
        """Drop what lies before the windows of a newer ``base`` (stored as ``item``)."""
        self.base, self.base_item = base, item
        self.digests.drop_before(base.records_from)
        self.d.drop_before(base.records_from)
        gone = min(len(self.row_counts), max(0, base.rows_from - self.items_from))
        self.held_rows -= sum(self.row_counts[:gone])
        del self.row_counts[:gone]
        for group in self.growing.values():
            group.drop_before(base.rows_from)
