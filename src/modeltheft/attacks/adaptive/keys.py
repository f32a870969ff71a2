"""Key rotation: a new API key every ``every`` queries, around any oracle or strategy."""

from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from modeltheft.defenses.guarded import GuardedModel
from modeltheft.errors import ConfigError
from modeltheft.oracle.answers import OracleAnswers
from modeltheft.oracle.base import Oracle
from modeltheft.oracle.local import LocalOracle

OracleFactory = Callable[[int], Oracle]
"""Builds the oracle that queries with the ``i``-th key (0, 1, 2, ...)."""


class RotatingOracle(Oracle):
    """Spend at most ``every`` queries per key, then move to the next one (Sybil thieves).

    ``factory(i)`` builds the oracle of the ``i``-th key: a :class:`LocalOracle` as client
    ``f"{prefix}-{i}"`` in-process (:func:`local_keys`), or an HTTP oracle per API key
    (:func:`http_keys`). A batch that crosses a key boundary is split over two keys.
    :meth:`rotate` moves on early (a canary saw the key flagged). ``every=None`` never
    rotates by count. Works under :func:`~modeltheft.attacks.extract` with any strategy.
    """

    paper: ClassVar[str] = (
        "Juuti et al., PRADA, EuroS&P 2019 (Sybil attacks evade per-client detection)"
    )

    def __init__(self, factory: OracleFactory, budget: int, every: int | None = 9) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)):
            raise ConfigError(f"every must be an integer >= 1 or None, got {every!r}")
        if every is not None and every < 1:
            raise ConfigError(f"every must be an integer >= 1 or None, got {every!r}")
        self.factory = factory
        self.every = every
        self._oracles: list[Oracle] = [factory(0)]
        self._on_key = 0
        super().__init__(budget, task=self._oracles[0].given_task)

    @property
    def current(self) -> Oracle:
        """The oracle of the key in use."""
        return self._oracles[-1]

    @property
    def keys_used(self) -> int:
        """Keys that have sent at least one query (or the first one)."""
        return len(self._oracles)

    @property
    def client_ids(self) -> list[str]:
        """Client names of the keys so far (in-process oracles; ``key-i`` otherwise)."""
        return [getattr(o, "client_id", f"key-{i}") for i, o in enumerate(self._oracles)]

    def rotate(self) -> None:
        """Use the next key from now on."""
        self._oracles.append(self.factory(len(self._oracles)))
        self._on_key = 0

    @property
    def target(self) -> str:
        return self.current.target

    def _describe(self):  # type: ignore[no-untyped-def]
        return self.current.discover()

    def _send(self, X: np.ndarray) -> OracleAnswers:
        parts: list[OracleAnswers] = []
        start = 0
        while start < len(X):
            if self.every is not None and self._on_key >= self.every:
                self.rotate()
            room = len(X) - start if self.every is None else self.every - self._on_key
            chunk = X[start : start + room]
            oracle = self.current
            if oracle.remaining < len(chunk):
                oracle.budget = oracle.spent + len(chunk)  # the rotation owns the budget
            parts.append(oracle.query(chunk))
            self._on_key += len(chunk)
            start += len(chunk)
        probabilities = None
        if all(p.probabilities is not None for p in parts):
            probabilities = np.vstack([p.probabilities for p in parts])  # type: ignore[misc]
        return OracleAnswers(
            np.concatenate([p.labels for p in parts]),
            probabilities,
            np.concatenate([p.refused for p in parts]),
        )

    def close(self) -> None:
        for oracle in self._oracles:
            oracle.close()


def local_keys(guarded: GuardedModel, prefix: str = "thief") -> OracleFactory:
    """In-process keys: the ``i``-th is client ``f"{prefix}-{i}"`` of ``guarded``."""

    def make(i: int) -> Oracle:
        return LocalOracle(guarded, budget=0, client_id=f"{prefix}-{i}")

    return make


def http_keys(url: str, api_keys: Sequence[str], **options: object) -> OracleFactory:
    """Keys of modeltheft's HTTP API, used in turn (a ConfigError when they run out)."""
    from modeltheft.oracle.http import HttpOracle

    def make(i: int) -> Oracle:
        if i >= len(api_keys):
            raise ConfigError(f"key rotation needs more than the {len(api_keys)} keys given")
        return HttpOracle(url, api_keys[i], budget=0, **options)  # type: ignore[arg-type]

    return make
