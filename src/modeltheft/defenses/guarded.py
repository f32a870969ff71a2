"""A victim behind a defense pipeline: what both the HTTP service and in-process oracles call."""

import hashlib
import threading

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.defenses.base import Answers, DefenseContext, Pipeline
from modeltheft.state.base import StateStore
from modeltheft.state.memory import MemoryStore


class GuardedModel:
    """Answer a client's batch: admission stages, then the model, then output stages.

    Each client draws from its own random stream, derived from ``seed`` and the client's name,
    so one client's answers do not depend on what other clients asked. Without a seed the
    streams come from the operating system's entropy.
    """

    def __init__(
        self,
        model: ClassifierMixin,
        pipeline: Pipeline,
        store: StateStore | None = None,
        seed: int | None = None,
    ) -> None:
        self.model = model
        self.pipeline = pipeline
        self.store = store if store is not None else MemoryStore()
        self.seed = seed
        self.classes = np.asarray(model.classes_)
        self._rngs: dict[str, np.random.Generator] = {}
        self._lock = threading.Lock()

    def _rng(self, client_id: str) -> np.random.Generator:
        if client_id not in self._rngs:
            if self.seed is None:
                self._rngs[client_id] = np.random.default_rng()
            else:
                tag = int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:8], "big")
                self._rngs[client_id] = np.random.default_rng([self.seed, tag])
        return self._rngs[client_id]

    def answer(self, client_id: str, X: np.ndarray) -> tuple[np.ndarray, Answers]:
        """Labels (as class values) and defended answers for ``X``; may raise RateLimited."""
        with self._lock:
            rng = self._rng(client_id)
            ctx = DefenseContext(client_id=client_id, rng=rng, store=self.store)
            self.pipeline.admit(len(X), ctx)
            probabilities = self.model.predict_proba(X)
            answers = self.pipeline.transform(probabilities, rng)
        return self.classes[answers.labels], answers
