"""A victim behind a defense pipeline: what both the HTTP service and in-process oracles call."""

import hashlib
import threading
from dataclasses import dataclass

import numpy as np
from sklearn.base import ClassifierMixin

from modeltheft.defenses.alerts import BLOCKED, STRICT, client_status, served_key
from modeltheft.defenses.base import Answers, DefenseContext, Pipeline, StageEnv
from modeltheft.errors import Blocked
from modeltheft.state.base import StateStore
from modeltheft.state.memory import MemoryStore


@dataclass(frozen=True)
class Reply:
    """A batch's answer: labels as class values, the defended answers, headers for the client."""

    labels: np.ndarray
    answers: Answers
    headers: dict[str, str]


class GuardedModel:
    """Answer a client's batch: its status, admission, then the model, then the other stages.

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
        n_features: int | None = None,
    ) -> None:
        self.model = model
        self.pipeline = pipeline
        self.store = store if store is not None else MemoryStore()
        self.seed = seed
        self.classes = np.asarray(model.classes_)
        features = n_features if n_features is not None else getattr(model, "n_features_in_", 64)
        pipeline.setup(StageEnv(self.store, len(self.classes), int(features)))
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

    def answer(self, client_id: str, X: np.ndarray) -> Reply:
        """Answer ``X`` for ``client_id``; may raise RateLimited or Blocked."""
        inputs = np.array(X, dtype=float)
        inputs.flags.writeable = False
        with self._lock:
            status = client_status(self.store, client_id)
            if status >= BLOCKED:
                raise Blocked("this API key is blocked: its queries look like model extraction")
            ctx = DefenseContext(client_id, self._rng(client_id), self.store, inputs=inputs)
            self.pipeline.admit(len(inputs), ctx)
            self.store.incr(served_key(client_id), len(inputs))
            probabilities = self.model.predict_proba(inputs)
            strict = np.full(len(inputs), status >= STRICT)
            answers = self.pipeline.transform(probabilities, ctx, suspicious=strict)
        return Reply(self.classes[answers.labels], answers, dict(ctx.headers))
