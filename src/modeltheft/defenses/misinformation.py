"""Adaptive misinformation: true answers in distribution, misleading ones out of it."""

import numpy as np

from modeltheft.defenses.base import Answers, DefenseContext, OutputStage, StageEnv
from modeltheft.defenses.keyed import choose, row_digests
from modeltheft.defenses.ood import KnnScorer, check_rate, knn_scorer
from modeltheft.state.base import StateStore


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


class AdaptiveMisinformation(OutputStage):
    """Answer out-of-distribution queries (and every query of a flagged client) misleadingly.

    A query whose k-NN distance to the training digits exceeds the quantile ``1 - fpr`` of the
    training digits' own leave-one-out distances is out of distribution. Such rows, and rows
    already marked suspicious, are answered with the victim's answer permuted so that its top
    class becomes one the victim finds least likely (see :func:`relabel`). Hard gate instead
    of the paper's sigmoid blend; least-likely class instead of a trained misinformation model.
    """

    name = "adaptive_misinformation"
    paper = (
        "Kariyappa & Qureshi, Defending Against Model Stealing Attacks with Adaptive "
        "Misinformation, CVPR 2020"
    )
    honest_cost = "wrong answers on the fraction fpr of real digits that look out of distribution"
    keeps_simplex = True

    def __init__(self, reference: str = "lab", k: int = 5, fpr: float = 0.002) -> None:
        self.reference = reference
        self.k = k
        self.fpr = check_rate("fpr", fpr, high=0.5)
        self._scorer: KnnScorer | None = None
        self._key = b""

    def setup(self, env: StageEnv) -> None:
        self._prepare(env.store)

    def _prepare(self, store: StateStore) -> KnnScorer:
        if self._scorer is None:
            self._scorer = knn_scorer(self.reference, self.k)
            self.threshold = self._scorer.threshold(self.fpr)
            self._key = store.secret("misinformation-key")
        return self._scorer

    def out_of_distribution(self, X: np.ndarray, store: StateStore) -> np.ndarray:
        """Boolean mask of the rows this stage would misinform on their own."""
        return self._prepare(store).score(X) > self.threshold

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        if ctx.inputs is None:
            return answers
        answers = answers.mark(self.out_of_distribution(ctx.inputs, ctx.store))
        rows = answers.flagged
        if not rows.any():
            return answers
        digests = row_digests(self._key, ctx.inputs)
        labels = misleading_labels(answers.original, digests)
        return answers.with_probabilities(relabel(answers.probabilities, rows, labels, digests))
