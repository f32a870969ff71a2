"""Per-client state kept by stateful defenses, and :func:`open_store` to pick a backend."""

from modeltheft.errors import ConfigError
from modeltheft.state.audit import AuditEntry
from modeltheft.state.base import BucketState, StateStore
from modeltheft.state.memory import MemoryStore
from modeltheft.state.redis import RedisStore, redact_url
from modeltheft.state.sqlite import SqliteStore

__all__ = [
    "AuditEntry",
    "BucketState",
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "StateStore",
    "open_store",
    "parse_store_url",
    "redact_url",
]

ACCEPTED = (
    "memory:// (one process, lost on exit), "
    "sqlite:///relative/path.db or sqlite:////absolute/path.db or a plain file path "
    "(shared by the processes of one machine, kept across restarts), "
    "redis://[user:password@]host:port/db or rediss://… (shared by replicas)"
)


def parse_store_url(url: str) -> tuple[str, str]:
    """What a state URL names, without opening it: ``("memory", "")``, ``("sqlite", path)``
    or ``("redis", url)``; a malformed URL or an unknown scheme is a ConfigError."""
    text = url.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if not text:
        raise ConfigError(f"empty state URL; accepted forms: {ACCEPTED}")
    if scheme == "memory":
        if text.lower() != "memory://":
            raise ConfigError(f"memory state takes no path: use exactly memory://, not {text!r}")
        return "memory", ""
    if scheme == "sqlite":
        if not text.lower().startswith("sqlite:///") or len(text) == len("sqlite:///"):
            raise ConfigError(
                f"bad SQLite state URL {text!r}: use sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        return "sqlite", text[len("sqlite:///") :]
    if scheme in ("redis", "rediss"):
        return "redis", text
    if scheme:
        raise ConfigError(
            f"unknown state URL scheme {scheme + '://'!r} in {redact_url(text)}; "
            f"accepted forms: {ACCEPTED}"
        )
    return "sqlite", text


def open_store(url: str, create: bool = True, read_only: bool = False) -> StateStore:
    """The state store a URL names: ``memory://``, ``sqlite:///path.db``, a path, ``redis://…``.

    ``sqlite:///state.db`` is relative to the working folder and ``sqlite:////var/x.db``
    absolute, as in SQLAlchemy. Anything else is a :class:`~modeltheft.errors.ConfigError`.
    A missing SQLite file is created (and logged at WARNING) unless ``create`` is False, which
    makes it a ConfigError (tools that only read the state); ``read_only`` also opens an
    existing SQLite file with ``mode=ro``, so nothing is created in it or written to it.
    """
    kind, target = parse_store_url(url)
    if kind == "memory":
        return MemoryStore()
    if kind == "redis":
        return RedisStore(target)
    return SqliteStore(target, create=create, read_only=read_only)
