"""State in Redis: shared by every replica of the service, atomic through single commands.

Counters are INCRBY, lists RPUSH/LRANGE/LTRIM (Lua scripts that keep indexes through a
trim), sets SADD/SMEMBERS/SPOP, secrets SET NX then GET;
``raise_to`` and ``take_tokens`` are Lua scripts, which Redis runs atomically. Every key is
prefixed with a namespace and the kind of value (``modeltheft:c:queries:alice``), so several
services can share one Redis, and a counter and a list with the same name do not collide, as
in the other backends. The audit log is a stream (XADD): its ids are the server's millisecond
times, so pruning is one XTRIM MINID.

A Redis that stops answering (refused connection, timeout) or refuses a command (a full
Redis's ``OOM``, a read-only replica, a server still loading) raises
:class:`~modeltheft.errors.StateUnavailable` (HTTP 503 in the service), never a silent reset.
"""

import functools
import secrets
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis

from modeltheft.errors import ConfigError, StateUnavailable
from modeltheft.state.audit import AuditEntry
from modeltheft.state.base import BucketState

P = ParamSpec("P")
R = TypeVar("R")
PAGE = 1000
"""Stream entries read per XREVRANGE call."""
SKEW_MS = 60_000
"""Slack for the clocks of the server (stream ids) and of the services (entry times)."""

# Redis turns Lua numbers into integers, so both scripts return numbers as strings.
RAISE_TO = """
local current = redis.call('GET', KEYS[1]) or '0'
if tonumber(ARGV[1]) > tonumber(current) then
    redis.call('SET', KEYS[1], ARGV[1])
    return ARGV[1]
end
return current
"""

# Lists keep stable indexes through trims: KEYS[2] counts the items trimmed from the head,
# so a list's index i is LRANGE's i - trimmed (LTRIM alone would renumber the items).
APPEND = """
local n = redis.call('LLEN', KEYS[1])
for _, item in ipairs(ARGV) do
    n = redis.call('RPUSH', KEYS[1], item)
end
return n + tonumber(redis.call('GET', KEYS[2]) or '0')
"""

ITEMS = """
local start = tonumber(ARGV[1])
if start >= 0 then
    start = math.max(0, start - tonumber(redis.call('GET', KEYS[2]) or '0'))
end
return redis.call('LRANGE', KEYS[1], start, -1)
"""

TRIM = """
local trimmed = tonumber(redis.call('GET', KEYS[2]) or '0')
local drop = math.min(redis.call('LLEN', KEYS[1]), tonumber(ARGV[1]) - trimmed)
if drop <= 0 then
    return 0
end
redis.call('LTRIM', KEYS[1], drop, -1)
redis.call('INCRBY', KEYS[2], drop)
return drop
"""

# SADD one member at a time: its reply (1 or 0) says whether that member was new.
ADD_NEW = """
local new = {}
for i, member in ipairs(ARGV) do
    new[i] = redis.call('SADD', KEYS[1], member)
end
return new
"""

# The same arithmetic as state.base.refill and state.base.withdraw, on IEEE doubles; '%.17g'
# round-trips a double exactly (and prints infinity as 'inf', which Python's float() reads).
TAKE_TOKENS = """
local cost = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(saved[1])
local last = tonumber(saved[2])
if tokens == nil or last == nil then
    tokens = capacity
    last = now
end
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
local allowed = 0
local remaining = tokens
local retry = 0
if cost <= tokens then
    allowed = 1
    remaining = tokens - cost
elseif cost > capacity or rate <= 0 then
    retry = math.huge
else
    retry = (cost - tokens) / rate
end
local fmt = '%.17g'
redis.call('HSET', KEYS[1], 'tokens', string.format(fmt, remaining),
    'last', string.format(fmt, math.max(last, now)))
return {allowed, string.format(fmt, remaining), string.format(fmt, retry)}
"""


def redact_url(url: str) -> str:
    """``url`` without its password (``redis://user:***@host:6379/0``), for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        scheme = url.split("://", 1)[0]
        return f"{scheme}://<unparsable URL>"


def _one_line(exc: BaseException, password: str | None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.replace(password, "***") if password else text


def _available(
    method: "Callable[Concatenate[RedisStore, P], R]",
) -> "Callable[Concatenate[RedisStore, P], R]":
    """Turn any Redis failure (lost or timed-out connection, refused command) into
    :class:`StateUnavailable`."""

    @functools.wraps(method)
    def wrapper(self: "RedisStore", *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            reason = _one_line(exc, self._password)
            raise StateUnavailable(f"Redis at {self.url} is unavailable: {reason}") from None
        except redis.RedisError as exc:  # OutOfMemoryError, ReadOnlyError, BusyLoadingError…
            reason = _one_line(exc, self._password)
            raise StateUnavailable(
                f"Redis at {self.url} refused a command ({type(exc).__name__}): {reason}"
            ) from None

    return wrapper


class RedisStore:
    """State in the Redis at ``url`` (``redis://[user:password@]host:port/db`` or ``rediss://``).

    Connects at once, so a wrong URL, a refused connection or a wrong password is a
    :class:`~modeltheft.errors.ConfigError` naming the URL without its password.
    """

    transactions = False
    """Whether calls share transactions (batches; group commit: :mod:`modeltheft.state.group`)."""

    def __init__(
        self,
        url: str,
        namespace: str = "modeltheft:",
        connect_timeout: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = redact_url(url)
        self.namespace = namespace
        try:
            self._password = urlsplit(url).password
        except ValueError:
            self._password = None
        try:
            self._client = redis.Redis.from_url(
                url, socket_connect_timeout=connect_timeout, socket_timeout=timeout
            )
        except (ValueError, redis.RedisError) as exc:
            raise ConfigError(
                f"invalid Redis URL {self.url}: {_one_line(exc, self._password)}"
            ) from None
        self._raise_to = self._client.register_script(RAISE_TO)
        self._take_tokens = self._client.register_script(TAKE_TOKENS)
        self._add_new = self._client.register_script(ADD_NEW)
        self._append = self._client.register_script(APPEND)
        self._items = self._client.register_script(ITEMS)
        self._trim = self._client.register_script(TRIM)
        try:
            self._client.ping()
        except (redis.RedisError, TypeError, ValueError) as exc:  # TypeError: unknown ?option=
            self._client.close()
            raise ConfigError(
                f"cannot use Redis at {self.url}: {_one_line(exc, self._password)}"
            ) from None

    def _key(self, kind: str, key: str) -> str:
        return f"{self.namespace}{kind}:{key}"

    @_available
    def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to counter ``key`` and return the new value."""
        return int(self._client.incrby(self._key("c", key), amount))

    @_available
    def get(self, key: str) -> int:
        """Current value of counter ``key`` (0 if never set)."""
        value = self._client.get(self._key("c", key))
        return int(value) if value is not None else 0

    @_available
    def raise_to(self, key: str, value: int) -> int:
        """Set counter ``key`` to ``max(current, value)`` and return the result."""
        return int(self._raise_to(keys=[self._key("c", key)], args=[int(value)]))

    @_available
    def append(self, key: str, items: Sequence[bytes]) -> int:
        """Append ``items`` to list ``key`` in order; return the list's new length."""
        keys = [self._key("l", key), self._key("lo", key)]
        return int(self._append(keys=keys, args=[bytes(item) for item in items]))

    @_available
    def items(self, key: str, start: int = 0) -> list[bytes]:
        """Items of list ``key`` from index ``start`` on (a negative start counts from the end)."""
        keys = [self._key("l", key), self._key("lo", key)]
        return [bytes(item) for item in self._items(keys=keys, args=[int(start)])]

    @_available
    def trim(self, key: str, start: int) -> int:
        """Delete the items of list ``key`` before index ``start`` (LTRIM, indexes kept)."""
        return int(self._trim(keys=[self._key("l", key), self._key("lo", key)], args=[int(start)]))

    @_available
    def delete(self, keys: Sequence[str]) -> None:
        """UNLINK the counters, lists, sets and buckets named ``keys``."""
        names = [self._key(kind, key) for key in keys for kind in ("c", "l", "lo", "s", "b")]
        if names:
            self._client.unlink(*names)

    @_available
    def take_members(self, key: str, count: int) -> list[str]:
        """SPOP up to ``count`` members of set ``key``."""
        if count <= 0:
            return []
        taken = self._client.spop(self._key("s", key), count) or []
        return [m.decode() if isinstance(m, bytes) else str(m) for m in taken]

    @_available
    def add_member(self, key: str, member: str) -> None:
        """Add ``member`` to set ``key``."""
        self._client.sadd(self._key("s", key), member)

    @_available
    def add_new_members(self, key: str, members: Sequence[str]) -> list[bool]:
        """Add ``members`` to set ``key``; for each, whether it was new (one Lua call)."""
        if not members:
            return []
        return [bool(n) for n in self._add_new(keys=[self._key("s", key)], args=list(members))]

    @_available
    def has_members(self, key: str, members: Sequence[str]) -> list[bool]:
        """For each of ``members``, whether it is in set ``key`` (one pipelined round trip)."""
        if not members:
            return []
        pipe = self._client.pipeline(transaction=False)
        for member in members:
            pipe.sismember(self._key("s", key), member)
        return [bool(n) for n in pipe.execute()]

    @_available
    def members(self, key: str) -> set[str]:
        """Members of set ``key``."""
        return {
            m.decode() if isinstance(m, bytes) else str(m)
            for m in self._client.smembers(self._key("s", key))
        }

    @_available
    def secret(self, name: str, nbytes: int = 32) -> bytes:
        """A random secret created on first use and the same for every later caller."""
        key = self._key("secret", name)
        self._client.set(key, secrets.token_bytes(nbytes), nx=True)
        value = self._client.get(key)
        if value is None:  # only if someone deleted it in between
            raise StateUnavailable(f"secret {name!r} vanished from Redis at {self.url}")
        return bytes(value)

    @_available
    def take_tokens(
        self, key: str, cost: float, capacity: float, refill_per_second: float, now: float
    ) -> BucketState:
        """Withdraw ``cost`` tokens from bucket ``key`` (full at first, refilled continuously)."""
        args = [float(cost), float(capacity), float(refill_per_second), float(now)]
        allowed, remaining, retry = self._take_tokens(keys=[self._key("b", key)], args=args)
        return BucketState(bool(int(allowed)), float(remaining), float(retry))

    @_available
    def audit_append(self, entries: Sequence[AuditEntry]) -> None:
        """XADD each entry to the audit stream (one round trip)."""
        name = self._key("audit", "log")
        with self._client.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xadd(name, {"e": entry.encode()})
            pipe.execute()

    @_available
    def audit_entries(
        self, client: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Audit entries of ``client`` at or after ``since``, oldest first, the newest ``limit``.

        Reads the stream backwards, a page at a time, until ``limit`` entries are found.
        """
        name = self._key("audit", "log")
        low = "-" if since is None else str(max(0, int(since * 1000) - SKEW_MS))
        high, found = "+", []
        while limit is None or len(found) < limit:
            page = self._client.xrevrange(name, max=high, min=low, count=PAGE)
            for _, fields in page:
                entry = AuditEntry.decode(fields[b"e"])
                if (client is None or entry.client == client) and (
                    since is None or entry.time >= since
                ):
                    found.append(entry)
            if len(page) < PAGE:
                break
            high = "(" + page[-1][0].decode()
        newest = found if limit is None else found[: max(0, limit)]
        return newest[::-1]

    @_available
    def audit_prune(self, before: float, limit: int | None = None) -> int:
        """XTRIM MINID: drop the entries the server added before ``before`` (epoch seconds).
        ``limit`` is not applied: Redis takes LIMIT only with approximate trimming, and the
        delete runs in the Redis server, not inside a commit of this worker."""
        return int(self._client.xtrim(self._key("audit", "log"), minid=int(before * 1000)))

    def batch(self) -> AbstractContextManager[None]:
        """Each call is atomic on the server already (Lua or MULTI): nothing to group."""
        return nullcontext()

    @_available
    def ping(self) -> None:
        """Write one small key: a full or read-only Redis still answers PING, yet refuses writes."""
        self._client.set(self._key("health", "ping"), b"1", ex=3600)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
