"""What a :class:`~modeltheft.state.sqlite.SqliteStore` keeps between its statements.

Two things, both valid only while the store holds the database's write lock or no other
connection has committed since (``PRAGMA data_version``):

- **reads**: counter values, list lengths and token buckets it last read or wrote, so a
  request does not read back what it just wrote;
- **set members known**: members of sets found in the database or added, never absences,
  so only a removal (``delete``, ``take_members``, logged in ``changes``) can make them wrong;
- **held-back writes** (write-behind): counters, buckets, list items, set members and audit
  rows written inside a transaction are kept here and reach the database in one
  ``executemany`` per table just before the commit. A request then costs a few statements
  per table per transaction, not one per call. The keys written are logged in the
  ``changes`` table, so that another connection (another worker) drops only those from its
  cached reads, not all of them (set members added are not logged: another connection's
  knowledge of members stays true when members are added).

Every change made inside a *unit* (one request sharing a group transaction with others) is
noted, so that a unit that fails is taken back alone (:meth:`Cache.undo_unit`) while its
savepoint (taken before its first direct write only) rolls back its direct statements.
"""

import sqlite3
from itertools import islice
from typing import Any

MISSING: Any = object()
"""An undo note's old value for a key that was absent."""

AUDIT_MARK = "\x00audit"
"""An undo note's key for the audit rows: the old value is their count."""


class Cache:
    """Cached reads and held-back writes of one SQLite connection (see the module doc)."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.lengths: dict[str, int] = {}
        self.buckets: dict[str, tuple[float, float]] = {}
        self.dirty_counters: dict[str, int] = {}
        self.dirty_buckets: dict[str, tuple[float, float]] = {}
        self.appends: dict[str, list[tuple[int, bytes]]] = {}
        self.audit: list[tuple[float, str, str]] = []
        self.removed: dict[str, bool] = {}  # keys deleted: logged as changed at the commit
        self.members: dict[str, dict[str, None]] = {}  # set members known to be there
        self.held_members: dict[str, dict[str, None]] = {}  # added at the commit
        self._member_count = 0  # members known: an upper bound (exact after a shrink)
        self._undo: list[tuple[Any, str, Any]] | None = None

    def __len__(self) -> int:
        """Cached reads held (the store shrinks the cache past its limit: :meth:`shrink`)."""
        return len(self.counters) + len(self.lengths) + len(self.buckets)

    @property
    def member_count(self) -> int:
        """Set members known, at most (bounded apart from the reads: :meth:`shrink_members`,
        so that the members of new rows, two a request, never push the counters out)."""
        return self._member_count

    def shrink(self, limit: int) -> int:
        """Drop the oldest cached reads (first cached) until at most ``limit`` are left, the
        same share from each table; never one whose write is held for the commit. Returns
        how many went. Inside a unit nothing goes (its undo notes would bring entries back
        without their own notes): the store shrinks between units."""
        total = len(self)
        excess = total - limit
        if excess <= 0 or self._undo is not None:
            return 0
        dropped = 0
        for table, held in (
            (self.counters, self.dirty_counters),
            (self.lengths, self.appends),
            (self.buckets, self.dirty_buckets),
        ):
            share = -(-len(table) * excess // total)  # rounded up: at most limit stay
            old = [key for key in islice(table, share + len(held)) if key not in held][:share]
            for key in old:
                del table[key]
            dropped += len(old)
        return dropped

    def shrink_members(self, limit: int) -> int:
        """Drop the members known of the oldest sets (first known) until at most ``limit``
        are left; never those of a set with members held for the commit, nothing inside a
        unit. Returns how many went."""
        if self._undo is not None:
            return 0
        self._member_count = sum(map(len, self.members.values()))  # exact again
        gone = 0
        for key in [key for key in self.members if key not in self.held_members]:
            if self._member_count - gone <= limit:
                break
            gone += len(self.members.pop(key))
        self._member_count -= gone
        return gone

    @property
    def held(self) -> bool:
        """Whether writes are waiting for the commit."""
        return bool(
            self.dirty_counters
            or self.dirty_buckets
            or self.appends
            or self.audit
            or self.removed
            or self.held_members
        )

    def _set(self, table: dict[str, Any], key: str, value: Any) -> None:
        if self._undo is not None:
            self._undo.append((table, key, table.get(key, MISSING)))
        table[key] = value

    def read_counter(self, key: str, value: int) -> None:
        """Remember a counter's value as read from the database."""
        self._set(self.counters, key, value)

    def read_length(self, key: str, length: int) -> None:
        """Remember a list's length as read from the database."""
        self._set(self.lengths, key, length)

    def write_counter(self, key: str, value: int) -> None:
        """Set counter ``key`` to ``value`` at the commit."""
        if self._undo is not None:
            self._undo.append((self.counters, key, self.counters.get(key, MISSING)))
            self._undo.append((self.dirty_counters, key, self.dirty_counters.get(key, MISSING)))
        self.counters[key] = self.dirty_counters[key] = value

    def write_bucket(self, key: str, tokens: float, last: float) -> None:
        """Set bucket ``key`` at the commit."""
        self._set(self.buckets, key, (tokens, last))
        self._set(self.dirty_buckets, key, (tokens, last))

    def write_items(self, key: str, start: int, items: list[bytes]) -> int:
        """Append ``items`` to list ``key`` (of length ``start``) at the commit; its new length."""
        rows = [(start + i, item) for i, item in enumerate(items)]
        self._set(self.appends, key, self.appends.get(key, []) + rows)
        self._set(self.lengths, key, start + len(items))
        return start + len(items)

    def know_members(self, key: str, found: "list[str] | set[str]") -> None:
        """Remember that ``found`` are members of set ``key`` (read from the database)."""
        known = self.members.get(key)
        if known is None:
            self._set(self.members, key, known := {})
        for member in found:
            if member not in known:
                self._set(known, member, None)
                self._member_count += 1

    def add_members(self, key: str, new: "list[str]") -> None:
        """Add ``new`` to set ``key`` at the commit (``INSERT OR IGNORE``: members already
        there are no harm), and know them from now on."""
        held = self.held_members.get(key)
        if held is None:
            self._set(self.held_members, key, held := {})
        for member in new:
            self._set(held, member, None)
        self.know_members(key, new)

    def take_held_members(self, key: str) -> list[str]:
        """The members of set ``key`` held for the commit, no longer held (the caller writes
        them now)."""
        held = self.held_members.get(key)
        if not held:
            return []
        self._set(self.held_members, key, {})
        return list(held)

    def unknow_members(self, key: str, gone: "list[str]") -> None:
        """Forget members ``gone`` of set ``key`` (removed), and log ``key`` at the commit."""
        known = self.members.get(key)
        if known is not None:
            for member in gone:
                if member in known:
                    if self._undo is not None:
                        self._undo.append((known, member, None))
                    del known[member]
        self._set(self.removed, key, True)

    def write_audit(self, rows: list[tuple[float, str, str]]) -> None:
        """Insert audit ``rows`` at the commit, after those already held."""
        if self._undo is not None:
            self._undo.append((self.audit, AUDIT_MARK, len(self.audit)))
        self.audit.extend(rows)

    def trim_held(self, key: str, start: int) -> bool:
        """Drop the items of list ``key`` held for the commit below index ``start`` (the newest
        stays); whether any is held (then the database's items below ``start`` may all go)."""
        rows = self.appends.get(key)
        if not rows:
            return False
        kept = [row for row in rows if row[0] >= start] or rows[-1:]
        if len(kept) != len(rows):
            self._set(self.appends, key, kept)
        return True

    def remove(self, keys: "list[str]") -> None:
        """Forget ``keys`` (deleted): cached reads and held writes; log them at the commit."""
        for key in keys:
            for table in (
                self.counters, self.lengths, self.buckets, self.members,
                self.dirty_counters, self.dirty_buckets, self.appends, self.held_members,
            ):  # fmt: skip
                if key in table:
                    if self._undo is not None:
                        self._undo.append((table, key, table[key]))
                    del table[key]
            self._set(self.removed, key, True)

    def held_items(self, key: str, start: int) -> tuple[int, list[bytes]] | None:
        """``(first held index, held items from start on)`` of list ``key``; None if none held."""
        rows = self.appends.get(key)
        if not rows:
            return None
        return rows[0][0], [item for idx, item in rows if idx >= start]

    def invalidate(self, keys: "list[str]") -> None:
        """Drop the cached reads of ``keys`` (another connection changed them)."""
        for key in keys:
            self.counters.pop(key, None)
            self.lengths.pop(key, None)
            self.buckets.pop(key, None)
            self.members.pop(key, None)

    def flush(self, conn: sqlite3.Connection) -> int:
        """Write what is held, one ``executemany`` per table, in the order it was written, and
        log the keys written in ``changes`` (so other connections drop only those); return
        how many change rows were logged."""
        changed = [*self.dirty_counters, *self.dirty_buckets, *self.appends, *self.removed]
        if changed:
            conn.executemany("INSERT INTO changes (key) VALUES (?)", [(k,) for k in changed])
        if self.dirty_counters:
            conn.executemany(
                "INSERT INTO counters (key, value) VALUES (?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                self.dirty_counters.items(),
            )
        if self.dirty_buckets:
            conn.executemany(
                "INSERT INTO buckets (key, tokens, last) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET tokens = excluded.tokens, last = excluded.last",
                [(key, tokens, last) for key, (tokens, last) in self.dirty_buckets.items()],
            )
        if self.appends:
            conn.executemany(
                "INSERT INTO lists (key, idx, item) VALUES (?, ?, ?)",
                [(key, idx, item) for key, rows in self.appends.items() for idx, item in rows],
            )
        if self.held_members:
            conn.executemany(
                "INSERT OR IGNORE INTO sets (key, member) VALUES (?, ?)",
                [(key, member) for key, held in self.held_members.items() for member in held],
            )
        if self.audit:
            conn.executemany("INSERT INTO audit (time, client, entry) VALUES (?, ?, ?)", self.audit)
        self.drop_held()
        return len(changed)

    def drop_held(self) -> None:
        """Forget the held writes (written, or rolled back with the cached reads)."""
        self.dirty_counters.clear()
        self.dirty_buckets.clear()
        self.appends.clear()
        self.audit.clear()
        self.removed.clear()
        self.held_members.clear()

    def forget(self) -> None:
        """Drop everything: cached reads and held writes (a rollback, another writer)."""
        self.counters.clear()
        self.lengths.clear()
        self.buckets.clear()
        self.members.clear()
        self._member_count = 0
        self.drop_held()
        self._undo = None

    def begin_unit(self) -> None:
        """Note every change from now on, until :meth:`end_unit` or :meth:`undo_unit`."""
        self._undo = []

    def end_unit(self) -> None:
        """Keep the unit's changes."""
        self._undo = None

    def undo_unit(self) -> None:
        """Take back every change since :meth:`begin_unit`, newest first."""
        notes, self._undo = self._undo or [], None
        for table, key, old in reversed(notes):
            if key == AUDIT_MARK and table is self.audit:
                del self.audit[old:]
            elif old is MISSING:
                table.pop(key, None)
            else:
                table[key] = old
