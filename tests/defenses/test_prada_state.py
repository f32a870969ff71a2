"""PRADA's per-client state in a worker: compact, and rebuilt exactly from any stored form."""

import os
import tracemalloc

import numpy as np
import pytest

from modeltheft.defenses.prada_state import (
    JOINED,
    OLD_RECORD,
    REPEAT,
    Base,
    Digests,
    PradaClient,
    digest_numbers,
    read_records,
    record,
)


def _records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    flags = rng.choice([0, JOINED, REPEAT], size=n, p=[0.6, 0.3, 0.1])
    return [
        record(int(rng.integers(0, 10)), int(f), float(rng.random()) if f != REPEAT else 0.0, d)
        for f, d in zip(flags, (rng.bytes(8) for _ in range(n)), strict=False)
    ]


def test_a_record_costs_a_few_dozen_bytes_in_a_worker() -> None:
    """A full window (10,000 records) must not cost MBs a client: as Python objects a record
    took ~200 B, so the 6 MiB a stage keeps in a worker held two such clients, and with a few
    dozen active clients every request read its client's history back from the store."""
    records = _records(10_000)
    PradaClient().fold(0, records[:50])  # NumPy's first-use caches are not the client's
    tracemalloc.start()
    try:
        state = PradaClient()
        for i in range(0, len(records), 3):
            state.fold(i, records[i : i + 3])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert state.n_records == 10_000
    assert held / 10_000 <= 48  # measured: ~29 B


def test_folding_at_once_equals_folding_one_by_one() -> None:
    """A client read back in one step (a worker that did not hold it) ends in the state of a
    worker that folded each request's records as they came: D, thresholds, digests."""
    records = _records(3_000, seed=1)
    whole, steps = PradaClient(), PradaClient()
    whole.fold(0, records)
    for i, item in enumerate(records):
        steps.fold(i, [item])
    assert whole.distances == steps.distances and whole.n_distances == steps.n_distances
    assert whole.thresholds == steps.thresholds and whole.thresholds
    assert np.array_equal(whole.digests.held(), steps.digests.held())
    assert whole.n_records == steps.n_records == 3_000


def test_records_of_every_stored_form_read_alike() -> None:
    """Old records (no digest), wide ones (a class index past 255) and a mix of them in one
    list read as each would alone."""
    digest = os.urandom(8)
    items = [
        OLD_RECORD.pack(3, JOINED, 1.5),
        record(300, 0, 2.5, digest),
        record(4, REPEAT, 0.0, digest),
    ]
    labels, flags, distances, digests = read_records(items)
    assert labels.tolist() == [3, 300, 4] and flags.tolist() == [JOINED, 0, REPEAT]
    assert distances.tolist() == [1.5, 2.5, 0.0]
    assert digests.tolist() == [0, int.from_bytes(digest, "big")] * 1 + [
        int.from_bytes(digest, "big")
    ]
    for item, label in zip(items, labels.tolist(), strict=True):
        assert read_records([item])[0].tolist() == [label]
    with pytest.raises(Exception, match="unpack"):
        read_records([b"\x00" * 5, b"\x00" * 6])  # neither form: refused, as before


def test_a_few_records_fold_as_many_do() -> None:
    """A request's few records are folded one by one, more at once: of every stored form
    (old, wide, mixed), the two ways end alike."""
    rng = np.random.default_rng(4)
    items = []
    for i in range(400):
        flags = int(rng.choice([0, JOINED, REPEAT]))
        distance = float(rng.random()) * (flags != REPEAT)
        if i % 7 == 0:
            items.append(OLD_RECORD.pack(int(rng.integers(0, 10)), flags, distance))
        else:
            label = int(rng.choice([2, 5, 300]))
            items.append(record(label, flags, distance, rng.bytes(8)))
    few, many = PradaClient(base=Base(upto=40)), PradaClient(base=Base(upto=40))
    many.fold(0, items)
    for i in range(0, len(items), 3):
        few.fold(i, items[i : i + 3])
    assert few.distances == many.distances and few.n_distances == many.n_distances
    assert few.thresholds == many.thresholds and 300 in few.thresholds
    assert np.array_equal(few.digests.held(), many.digests.held())
    with pytest.raises(Exception, match="unpack"):
        PradaClient().fold(0, [b"\x00" * 5])  # no form: refused, as before
    untouched = PradaClient()
    with pytest.raises(Exception, match="unpack"):
        untouched.fold(0, [record(2, JOINED, 1.5, rng.bytes(8)), b"\x00" * 5])
    assert untouched.n_records == 0 and not untouched.thresholds and not untouched.distances


def test_digests_are_a_window_that_answers_membership() -> None:
    digests = Digests()
    rows = [os.urandom(8) for _ in range(100)]
    values = digest_numbers(rows)
    digests.extend(10, values[:60])
    digests.extend(70, values[60:])
    assert digests.contains([rows[0], rows[99]]) == [True, True]
    digests.drop_before(40)  # records 10..39 leave the window
    assert digests.first == 40 and len(digests) == 70
    assert digests.contains([rows[0], rows[29], rows[30]]) == [False, False, True]
    assert digests.contains([rows[30]]) == [True] and digests.contains([rows[29]]) == [False]
    assert digests.contains([bytes(8)] * 2) == [False, False]  # 0: an old record's
    assert digests.contains([bytes(8)]) == [False]
    with pytest.raises(ValueError, match="expected"):
        digests.extend(5, values[:1])


def test_growing_sets_read_at_once_equal_those_grown_one_item_at_a_time() -> None:
    """Items of 0, 1 or several rows of mixed classes, read back in one step, give each class
    the rows (and item positions) a worker that read them one by one has."""
    from modeltheft.defenses.prada_state import read_rows
    from modeltheft.defenses.rowpack import pack

    rng = np.random.default_rng(2)
    items = []
    for _ in range(60):
        n = int(rng.integers(0, 4))
        items.append(pack(rng.random((n, 5)), rng.integers(0, 3, n)))
    whole, steps = PradaClient(), PradaClient()
    whole.add_rows(7, [read_rows(item, labelled=True) for item in items])
    for i, item in enumerate(items):
        steps.add_rows(7 + i, [read_rows(item, labelled=True)])
    assert whole.n_rows == steps.n_rows == 67 and whole.held_rows == steps.held_rows > 0
    assert whole.row_counts == steps.row_counts and whole.items_from == steps.items_from == 7
    assert sorted(whole.growing) == sorted(steps.growing)
    for label, group in whole.growing.items():
        assert np.array_equal(group.held(), steps.growing[label].held())
        group.drop_before(40)
        steps.growing[label].drop_before(40)
        assert np.array_equal(group.held(), steps.growing[label].held())


def test_rows_are_held_narrow_while_exact_and_widen_when_a_row_needs_it() -> None:
    """Digits' pixels fit float16 (a quarter of the bytes); a row that does not is held
    exactly all the same, and distances are those of float64 rows throughout."""
    from modeltheft.defenses.prada_state import Rows

    pixels = np.arange(64, dtype=float).reshape(1, 64) % 17 / 16  # what digits' rows hold
    rows = Rows(64)
    rows.extend(np.repeat(pixels, 100, axis=0), np.arange(100))
    narrow = rows.nbytes
    assert rows.held().dtype == np.float64 and np.array_equal(rows.held()[0], pixels[0])
    assert narrow < Rows(64, compact=False).nbytes * 100 / 8 / 3  # ~ a quarter of float64's
    fine = pixels + 1e-9  # not exact in float16 nor float32
    rows.extend(fine, np.array([100]))
    assert np.array_equal(rows.held()[-1], fine[0]) and np.array_equal(rows.held()[0], pixels[0])
    query = pixels[0] + 0.5
    reference = np.vstack([np.repeat(pixels, 100, axis=0), fine])
    expected = float(np.einsum("ij,ij->i", reference - query, reference - query).min())
    assert rows.nearest(query) == expected
    big = np.full((1, 64), 1e6)  # beyond float16's range, exact in float32
    wide = Rows(64)
    wide.extend(big, np.array([0]))
    assert np.array_equal(wide.held(), big) and wide.nbytes < Rows(64, compact=False).nbytes
    nan = np.full((1, 64), np.nan)
    wide.extend(nan, np.array([1]))
    assert np.isnan(wide.held()[1]).all()


def test_integer_rows_are_held_in_int8_until_one_is_not() -> None:
    """Digits' raw pixels fit int8 (an eighth of float64's bytes); -0.0, a fraction or a value
    past 127 widens the storage, and every row held keeps its float64 value and sign."""
    from modeltheft.defenses.prada_state import Rows

    pixels = (np.arange(128, dtype=float).reshape(2, 64) % 17)[:, ::-1].copy()
    rows = Rows(64)
    rows.extend(np.repeat(pixels, 50, axis=0), np.arange(100))
    assert rows._data.dtype == np.int8 and rows.held().dtype == np.float64
    query = np.arange(64, dtype=float) % 5
    reference = np.repeat(pixels, 50, axis=0)
    assert rows.nearest(query) == float(
        np.einsum("ij,ij->i", reference - query, reference - query).min()
    )
    for row, dtype in [(-0.0, np.float16), (0.5, np.float16), (300.0, np.float16),
                       (1e6, np.float32), (0.1, np.float64)]:  # fmt: skip
        grown = Rows(64)
        grown.extend(pixels, np.arange(2))
        odd = pixels[:1].copy()
        odd[0, 3] = row
        grown.extend(odd, np.array([2]))
        assert grown._data.dtype == dtype
        held = grown.held()
        assert held[:2].tobytes() == pixels.tobytes() and held[2].tobytes() == odd[0].tobytes()
