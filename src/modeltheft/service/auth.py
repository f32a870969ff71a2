"""API keys: kept only as salted SHA-256 hashes and compared in constant time.

API keys are long random tokens, not passwords, so a salted SHA-256 is enough; a keys file
holds lines ``name:sha256$<salt hex>$<digest hex>`` made by ``modeltheft keys new``.
"""

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from modeltheft.errors import ConfigError

ENV_VAR = "MODELTHEFT_API_KEYS"
SCHEME = "sha256"
MAX_REMEMBERED = 4096
"""Verified key digests kept per process (one per client in practice)."""
CLIENT_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")
"""A client name: it is written into the access log and the audit, so nothing that could
break a log line (controls, spaces, quotes) or pass for another field."""


def check_client_name(name: str) -> str:
    """``name`` if it is a valid client name; else a one-line ConfigError."""
    if not isinstance(name, str) or not CLIENT_NAME.fullmatch(name):
        shown = ascii(name) if len(str(name)) <= 40 else ascii(str(name)[:40]) + "..."
        raise ConfigError(
            f"client name {shown} must be 1-128 letters, digits, '_', '.', '-', '@' or '+'"
        )
    return name


def hash_key(key: str, salt: bytes | None = None) -> str:
    """The stored form of ``key``: ``sha256$salt$digest``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.sha256(salt + key.encode()).hexdigest()
    return f"{SCHEME}${salt.hex()}${digest}"


def new_key() -> str:
    """A fresh random API key."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class _Entry:
    name: str
    salt: bytes
    digest: bytes


def _parse_hash(name: str, stored: str) -> _Entry:
    parts = stored.split("$")
    if len(parts) != 3 or parts[0] != SCHEME:
        raise ConfigError(f"key {name!r}: expected '{SCHEME}$<salt>$<digest>'")
    try:
        salt, digest = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
    except ValueError:
        raise ConfigError(f"key {name!r}: salt and digest must be hexadecimal") from None
    if len(digest) != 32:
        raise ConfigError(f"key {name!r}: digest must be 64 hex digits")
    return _Entry(name, salt, digest)


def _split_pair(item: str, source: str) -> tuple[str, str]:
    name, sep, value = item.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ConfigError(f"{source}: expected 'name:value' entries, got an entry without one")
    return name, value


class KeyRing:
    """The hashed API keys a service accepts."""

    def __init__(self, entries: list[_Entry]) -> None:
        names = [check_client_name(e.name) for e in entries]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"duplicate API key names: {', '.join(duplicates)}")
        self._entries = entries
        # Digests of recently verified keys (under a per-process pepper) → client name, so a
        # returning client costs one hash, not one per configured key. Only keys that matched
        # are remembered: unknown keys cannot fill it.
        self._pepper = secrets.token_bytes(32)
        self._verified: dict[bytes, str] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        """Client names, never keys."""
        return [e.name for e in self._entries]

    @classmethod
    def from_pairs(cls, pairs: dict[str, str]) -> "KeyRing":
        """From plain ``{name: key}``; only the hashes are kept."""
        entries = []
        for name, key in pairs.items():
            try:
                raw = key.encode()
            except UnicodeEncodeError:  # an undecodable byte of the environment (PEP 383)
                raise ConfigError(f"key {name!r} is not valid UTF-8 text") from None
            salt = secrets.token_bytes(16)
            entries.append(_Entry(name, salt, hashlib.sha256(salt + raw).digest()))
        return cls(entries)

    @classmethod
    def from_env_value(cls, value: str) -> "KeyRing":
        """From ``name:key,name:key`` (the ``MODELTHEFT_API_KEYS`` format)."""
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, key = _split_pair(item, ENV_VAR)
            if name in pairs:
                raise ConfigError(f"{ENV_VAR}: duplicate name {name!r}")
            pairs[name] = key
        return cls.from_pairs(pairs)

    @classmethod
    def from_file(cls, path: Path) -> "KeyRing":
        """From a keys file of ``name:sha256$salt$digest`` lines (``#`` starts a comment)."""
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read keys file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"keys file {path} is not UTF-8 text") from None
        entries = []
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line:
                entries.append(_parse_hash(*_split_pair(line, str(path))))
        return cls(entries)

    @classmethod
    def from_sources(
        cls, keys_file: Path | None = None, env: dict[str, str] | None = None
    ) -> "KeyRing":
        """Keys from ``keys_file`` and the environment variable, together."""
        env = os.environ if env is None else env
        entries: list[_Entry] = []
        if keys_file is not None:
            entries += cls.from_file(keys_file)._entries
        if env.get(ENV_VAR):
            entries += cls.from_env_value(env[ENV_VAR])._entries
        return cls(entries)

    def verify(self, key: str) -> str | None:
        """The client name whose key is ``key``, or None.

        A key seen before is found by its peppered digest in one dictionary lookup (its
        timing depends only on that digest, which an attacker can neither choose nor see).
        Otherwise every entry is checked with a constant-time comparison, whichever matches.
        """
        raw = key.encode()
        tag = hashlib.blake2b(raw, key=self._pepper, digest_size=32).digest()  # a keyed MAC
        known = self._verified.get(tag)
        if known is not None:
            return known
        found: str | None = None
        for entry in self._entries:
            candidate = hashlib.sha256(entry.salt + raw).digest()
            if hmac.compare_digest(candidate, entry.digest):
                found = entry.name
        if found is not None:
            if len(self._verified) >= MAX_REMEMBERED:
                self._verified.clear()
            self._verified[tag] = found
        return found


METRICS_ENV = "MODELTHEFT_METRICS_KEY"
METRICS_HINT = (
    f"set {METRICS_ENV} to a secret (or its stored form sha256$<salt>$<digest>, as "
    "'modeltheft keys new' prints) to enable GET /metrics"
)


class MetricsKey:
    """The credential of ``GET /metrics``, separate from every client's API key.

    Per-request counters (rows altered, refusals) would tell a client which of its answers
    were misinformed, so ``/metrics`` is for the operator only. Kept as a salted SHA-256 and
    compared in constant time, as API keys are.
    """

    def __init__(self, salt: bytes, digest: bytes) -> None:
        self._salt = salt
        self._digest = digest

    @classmethod
    def from_value(cls, value: str) -> "MetricsKey":
        """From the plain secret, or its stored form ``sha256$<salt hex>$<digest hex>``."""
        value = value.strip()
        if not value:
            raise ConfigError(f"{METRICS_ENV} is empty: {METRICS_HINT}")
        if value.startswith(f"{SCHEME}$"):
            entry = _parse_hash(METRICS_ENV, value)
            return cls(entry.salt, entry.digest)
        try:
            raw = value.encode()
        except UnicodeEncodeError:
            raise ConfigError(f"{METRICS_ENV} is not valid UTF-8 text") from None
        salt = secrets.token_bytes(16)
        return cls(salt, hashlib.sha256(salt + raw).digest())

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "MetricsKey | None":
        """From ``MODELTHEFT_METRICS_KEY``; None if it is unset (``/metrics`` disabled)."""
        env = os.environ if env is None else env
        value = env.get(METRICS_ENV)
        return None if value is None else cls.from_value(value)

    def verify(self, token: str) -> bool:
        """Whether ``token`` is the metrics credential (constant-time comparison)."""
        try:
            raw = token.encode()
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(hashlib.sha256(self._salt + raw).digest(), self._digest)
