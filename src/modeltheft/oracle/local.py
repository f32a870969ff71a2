"""The victim in-process, behind the same defense pipeline the service runs."""

import numpy as np

from modeltheft.defenses.guarded import GuardedModel
from modeltheft.errors import Blocked, RateLimited
from modeltheft.oracle.answers import OracleAnswers
from modeltheft.oracle.base import Oracle
from modeltheft.oracle.log import QueryLog


class LocalOracle(Oracle):
    """Queries a :class:`GuardedModel` directly, as client ``client_id``, one request per batch."""

    def __init__(
        self,
        guarded: GuardedModel,
        budget: int,
        client_id: str = "attacker",
        log: QueryLog | None = None,
    ) -> None:
        super().__init__(budget, log, task=guarded.task)
        self.guarded = guarded
        self.client_id = client_id

    def _send(self, X: np.ndarray) -> OracleAnswers:
        n = len(X)
        try:
            reply = self.guarded.answer(self.client_id, X)
        except (RateLimited, Blocked):
            return OracleAnswers(np.full(n, -1), None, np.ones(n, dtype=bool))
        answers = reply.answers
        probabilities = answers.probabilities if answers.expose_probabilities else None
        # Indices into the task's classes (the reply's labels are the class values).
        return OracleAnswers(
            np.asarray(answers.labels, dtype=int), probabilities, np.zeros(n, dtype=bool)
        )
