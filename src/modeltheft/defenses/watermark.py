"""DAWN watermarking: a keyed fraction of suspicious queries gets a recorded wrong answer.

A model trained on our answers to those queries tends to reproduce the wrong labels; a model
trained independently of our key cannot do better than chance. ``modeltheft watermark
verify`` turns that difference into a p-value (:func:`verify`).
"""

from dataclasses import dataclass

import numpy as np
from scipy import stats

from modeltheft.defenses.base import Answers, DefenseContext, OutputStage, StageEnv
from modeltheft.defenses.keyed import choose, row_digests, unit_interval
from modeltheft.defenses.misinformation import relabel
from modeltheft.defenses.ood import check_rate
from modeltheft.errors import ConfigError
from modeltheft.state.base import StateStore

CLIENTS_KEY = "watermark:clients"
CLASSES_KEY = "watermark:n_classes"


def records_key(client_id: str) -> str:
    """Store key of a client's watermark records."""
    return f"watermark:{client_id}"


class Watermark(OutputStage):
    """Answer a keyed fraction ``rate`` of queries with a keyed wrong label, and record them.

    ``HMAC(key, query)`` decides, identically in every worker and after restarts, whether a
    query is watermarked and which wrong class it gets (uniform over the k - 1 classes that
    are not the victim's). ``scope = "suspicious"`` watermarks only rows that a detection
    stage marked (out-of-distribution queries, flagged clients), so honest clients are not
    charged; ``scope = "all"`` is DAWN as published.
    """

    name = "watermark"
    paper = "Szyller et al., DAWN: Dynamic Adversarial Watermarking of Neural Networks, ACM MM 2021"
    honest_cost = "scope=all: the fraction rate of answers is wrong; scope=suspicious: none"
    keeps_simplex = True

    def __init__(self, rate: float = 0.25, scope: str = "suspicious") -> None:
        self.rate = check_rate("rate", rate)
        if scope not in ("suspicious", "all"):
            raise ConfigError(f"scope must be 'suspicious' or 'all', got {scope!r}")
        self.scope = scope
        self._key: bytes | None = None

    def setup(self, env: StageEnv) -> None:
        self._key = env.store.secret("watermark-key")
        env.store.raise_to(CLASSES_KEY, env.n_classes)

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        if ctx.inputs is None or len(ctx.inputs) == 0:
            return answers
        if self.scope == "suspicious" and not answers.flagged.any():
            return answers  # nothing to watermark: skip the HMACs
        if self._key is None:
            self._key = ctx.store.secret("watermark-key")
        digests = row_digests(self._key, ctx.inputs)
        chosen = unit_interval(digests) < self.rate
        if self.scope == "suspicious":
            chosen &= answers.flagged
        if not chosen.any():
            return answers
        k = answers.original.shape[1]
        victim = np.argmax(answers.original, axis=1)
        labels = np.array(
            [(int(v) + 1 + choose(d, k - 1)) % k for v, d in zip(victim, digests, strict=True)]
        )
        rows = np.flatnonzero(chosen)
        ctx.store.append(
            records_key(ctx.client_id),
            [bytes([labels[i]]) + np.asarray(ctx.inputs[i], np.float64).tobytes() for i in rows],
        )
        ctx.store.add_member(CLIENTS_KEY, ctx.client_id)
        return answers.with_probabilities(relabel(answers.probabilities, chosen, labels, digests))


@dataclass(frozen=True)
class WatermarkRecords:
    """The distinct watermarked queries of one client and the labels they were given."""

    client_id: str
    X: np.ndarray
    labels: np.ndarray


def load_records(store: StateStore, client_id: str) -> WatermarkRecords:
    """A client's watermark records, repeats removed (a repeated query counts once)."""
    seen: dict[bytes, int] = {}
    for item in store.items(records_key(client_id)):
        seen.setdefault(item[1:], item[0])
    if not seen:
        return WatermarkRecords(client_id, np.empty((0, 0)), np.empty(0, dtype=int))
    X = np.array([np.frombuffer(row, dtype=np.float64) for row in seen])
    return WatermarkRecords(client_id, X, np.array(list(seen.values()), dtype=int))


def watermarked_clients(store: StateStore) -> list[str]:
    """Clients that received at least one watermark answer."""
    return sorted(store.members(CLIENTS_KEY))


@dataclass(frozen=True)
class Verdict:
    """Ownership evidence against one suspect for one client's watermarks."""

    client_id: str
    n_watermarks: int
    matches: int
    chance: float
    p_value: float

    def describe(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "client": self.client_id,
            "watermarks": self.n_watermarks,
            "matches": self.matches,
            "chance_rate_at_most": round(self.chance, 6),
            "p_value": self.p_value,
        }


def verify(records: WatermarkRecords, suspect_labels: np.ndarray, n_classes: int) -> Verdict:
    """Binomial test: does the suspect give our wrong labels more often than chance?

    For each record the watermark label was drawn by HMAC uniformly among the ``k - 1``
    classes other than the victim's, so a model that never saw our answers matches it with
    probability at most ``1 / (k - 1)`` whatever it predicts. The p-value is
    ``P(Binomial(n, 1 / (k - 1)) >= matches)``; small means the suspect learned our answers.
    """
    if n_classes < 2:
        raise ConfigError("watermark verification needs at least 2 classes")
    n = len(records.labels)
    chance = 1.0 / (n_classes - 1)
    matches = int(np.sum(np.asarray(suspect_labels) == records.labels)) if n else 0
    p_value = float(stats.binomtest(matches, n, chance, alternative="greater").pvalue) if n else 1.0
    return Verdict(records.client_id, n, matches, chance, p_value)
