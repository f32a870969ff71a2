"""Adaptive misinformation: true answers in distribution, misleading ones out of it."""

import logging
from typing import ClassVar

import numpy as np

from modeltheft.defenses.base import STAGES, Answers, DefenseContext, OutputStage, StageEnv
from modeltheft.defenses.detection import RATE, REFERENCE
from modeltheft.defenses.keyed import choose
from modeltheft.defenses.ood import SCALES, KnnScorer, knn_scorer
from modeltheft.errors import ConfigError
from modeltheft.registry import Interval, Options

log = logging.getLogger("modeltheft.defenses")


def misleading_labels(original: np.ndarray, digests: list[bytes]) -> np.ndarray:
    """Per row, one of the classes the victim finds least likely (keyed choice among ties)."""
    labels = np.empty(len(original), dtype=int)
    for i, (row, digest) in enumerate(zip(original, digests, strict=True)):
        candidates = np.flatnonzero(row <= row.min() + 1e-12)
        labels[i] = candidates[choose(digest, len(candidates))]
    return labels


def relabel(
    probabilities: np.ndarray, rows: np.ndarray, labels: np.ndarray, digests: list[bytes]
) -> np.ndarray:
    """Rewrite each selected row so that ``labels[row]`` is on top and the rest says nothing.

    The row keeps its multiset of values (so it looks like an ordinary answer, as confident
    as the true one): the largest goes to the new label, the others to the remaining classes
    in a keyed random order, so the runners-up leak nothing about the victim either.
    """
    out = probabilities.copy()
    k = out.shape[1]
    for i in np.flatnonzero(rows):
        values = np.sort(out[i])[::-1]
        others = np.delete(np.arange(k), int(labels[i]))
        order = np.random.default_rng(list(digests[i][16:32])).permutation(others)
        out[i, int(labels[i])] = values[0]
        out[i, order] = values[1:]
        if np.argmax(out[i]) != labels[i]:  # a tie at the top: break it towards the label
            out[i] *= 1.0 - 1e-9
            out[i, int(labels[i])] += 1e-9
    return out


@STAGES.register
class AdaptiveMisinformation(OutputStage):
    """Answer out-of-distribution queries (and a flagged client's odd ones) misleadingly.

    A query whose k-NN distance to the reference rows (the task's training rows by default,
    in the standardised space of :mod:`~modeltheft.defenses.ood`) exceeds the quantile
    ``1 - fpr`` of their own leave-one-out distances is out of distribution. Such rows, and rows
    already marked suspicious, are answered with the victim's answer permuted so that its top
    class becomes one the victim finds least likely (see :func:`relabel`). Hard gate instead
    of the paper's sigmoid blend; least-likely class instead of a trained misinformation model.
    With two classes the misleading answer is simply the other class.

    The per-row gate needs at least ``1 / fpr - 1`` reference rows (499 at the default
    ``fpr``; digits has 1,257): with fewer, no threshold read from them can keep honest rows
    misinformed at rate ``fpr`` (a new row exceeds the largest of n with probability about
    1 / (n + 1)), so the gate stays shut, a warning says so, and only rows that other stages
    marked suspicious are misinformed. Measured on the ``wine`` (124 training rows) and
    ``breast-cancer`` (398) tasks, the open gate misinformed one honest evaluation row in
    each: more than half a point of accuracy.

    For a client under the strict policy (flagged by a detector), rows it already sent while
    clean keep the answer they had, and of its new rows those beyond the looser quantile
    ``1 - strict_fpr`` are misinformed (and marked suspicious, so a watermark stage acts on
    them), not every row: a thief's canary of real rows it owns then looks the same on a
    flagged key as on a clean one, while its synthetic queries are misled. ``strict_fpr = 1``
    misinforms every new row of a strict client (as before), and so does a reference too
    small to resolve ``strict_fpr`` (fewer than ``1 / strict_fpr - 1`` rows).
    """

    name = "adaptive_misinformation"
    paper = (
        "Kariyappa & Qureshi, Defending Against Model Stealing Attacks with Adaptive "
        "Misinformation, CVPR 2020"
    )
    honest_cost = "wrong answers on the fraction fpr of real rows that look out of distribution"
    keeps_simplex = True
    grades_strict = True
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "reference": [REFERENCE],
        "scale": [Options(*SCALES)],
        "k": [Interval(int, 1, None)],
        "fpr": [RATE],
        "strict_fpr": [Interval(float, 0, 1, closed="right")],
    }

    def __init__(
        self,
        reference: str = "task",
        k: int = 5,
        fpr: float = 0.002,
        scale: str = "auto",
        strict_fpr: float = 0.2,
    ) -> None:
        self.reference = reference
        self.k = k
        self.fpr = fpr
        self.scale = scale
        self.strict_fpr = strict_fpr
        self.validate_params()
        if strict_fpr < fpr:
            raise ConfigError(
                f"defense stage {self.name!r}: strict_fpr must be >= fpr ({fpr}): the strict "
                f"policy's gate is the looser one, got {strict_fpr!r}"
            )
        self._scorer: KnnScorer | None = None
        self.threshold = float("inf")
        self.strict_threshold = -float("inf")
        """Score above which a new row of a strict client is misinformed (-inf: every row)."""
        self.gated = False
        """Whether the per-row out-of-distribution gate is open (enough reference rows)."""
        self._key = b""

    def setup(self, env: StageEnv) -> None:
        self._scorer = knn_scorer(self.reference, self.k, env.task, self.scale)
        self.gated = self._scorer.resolves(self.fpr)
        if self.strict_fpr < 1.0 and self._scorer.resolves(self.strict_fpr):
            self.strict_threshold = self._scorer.threshold(self.strict_fpr)
        if self.gated:
            self.threshold = self._scorer.threshold(self.fpr)
        else:
            log.warning(
                "adaptive_misinformation: %d reference rows cannot hold fpr = %g (need %d): "
                "only the queries of flagged clients are misinformed",
                len(self._scorer.calibration),
                self.fpr,
                int(np.ceil(1 / self.fpr - 1)),
            )
        self._key = env.store.secret("misinformation-key")

    def out_of_distribution(self, X: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows this stage would misinform on their own."""
        if self._scorer is None:
            raise ConfigError(f"stage {self.name!r} was used before setup")
        if not self.gated:
            return np.zeros(len(X), dtype=bool)
        return self._scorer.score(X) > self.threshold

    def strict_gate(self, X: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows this stage misinforms for a client under the strict policy
        (rows it did not send while clean): beyond the quantile ``1 - strict_fpr``."""
        if self._scorer is None:
            raise ConfigError(f"stage {self.name!r} was used before setup")
        if self.strict_threshold == -float("inf"):
            return np.ones(len(X), dtype=bool)
        return self._scorer.score(X) > self.strict_threshold

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        if ctx.inputs is None:
            return answers
        # Canonical rows: a twin of a query (-0.0, float32, within the task's precision) is
        # gated, and answered, exactly as the query itself.
        answers = answers.mark(self.out_of_distribution(ctx.canonical))
        if answers.strict and (strict := answers.strict_rows(ctx)).any():
            # A flagged client's real rows still get true answers (a canary of digits the
            # thief owns looks like a clean key's); what looks synthetic is misinformed.
            answers = answers.mark(strict & self.strict_gate(ctx.canonical))
        if not answers.any_flagged:
            return answers
        rows = answers.flagged
        digests = ctx.keyed_digests(self._key)
        labels = misleading_labels(answers.original, digests)
        return answers.with_probabilities(relabel(answers.probabilities, rows, labels, digests))
