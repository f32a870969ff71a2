"""A flagged key cannot be told from a clean one by a canary of rows the thief already knows.

Rows a client sent while clean keep their answers under the strict policy; of its new rows,
adaptive misinformation misinforms only those beyond its looser ``strict_fpr`` gate, so a
flagged thief's real digits get true answers while its synthetic queries are misled.
"""

import numpy as np
import pytest

from modeltheft.defenses import GuardedModel, Pipeline, load_pipeline
from modeltheft.defenses.alerts import STRICT, client_status
from modeltheft.defenses.detection import OodRateMonitor
from modeltheft.defenses.misinformation import AdaptiveMisinformation
from modeltheft.defenses.watermark import Watermark
from modeltheft.errors import ConfigError
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task
from modeltheft.victim import train_victim

TASK = digits_task().held_out()


@pytest.fixture(scope="module")
def model():
    return train_victim("rf", split_name="holdout").model


def guarded(model, pipeline: Pipeline | None = None, seed: int = 0) -> GuardedModel:
    store = MemoryStore(np.random.default_rng(seed))
    pipeline = pipeline or load_pipeline("recommended")
    return GuardedModel(model, pipeline, store, seed=seed, task=TASK)


def one_by_one(g: GuardedModel, client: str, X: np.ndarray) -> np.ndarray:
    return np.concatenate([g.answer(client, row[None, :]).labels for row in X])


def flag(g: GuardedModel, client: str, seed: int = 0) -> None:
    one_by_one(g, client, np.random.default_rng(seed).random((40, 64)))
    assert client_status(g.store, client) == STRICT


def test_a_canary_of_known_rows_looks_the_same_on_a_flagged_key(model) -> None:
    rng = np.random.default_rng(0)
    X = TASK.data.X_eval[rng.permutation(len(TASK.data.X_eval))]
    canary, fresh = X[:50], X[50:250]
    g = guarded(model)
    clean = one_by_one(g, "clean", canary)
    one_by_one(g, "thief", canary)  # while clean: the thief learns its canary's answers
    flag(g, "thief")
    again = one_by_one(g, "thief", canary)
    twins = one_by_one(g, "thief", np.where(canary == 0, -0.0, canary))
    assert np.array_equal(again, clean) and np.array_equal(twins, clean)
    # New real digits: misinformed only beyond strict_fpr (0.2 in recommended: 14-16% of the
    # test digits score beyond it; 0.02 gave ~1%, but let rendered-digit thieves through).
    flagged, honest = one_by_one(g, "thief", fresh), one_by_one(g, "clean", fresh)
    assert np.mean(flagged != honest) <= 0.25
    # Synthetic queries of the flagged key are still misled, and watermarked.
    noise = np.random.default_rng(9).random((30, 64))
    assert np.all(one_by_one(g, "thief", noise) != model.predict(noise))


def test_strict_fpr_one_misinforms_every_new_row(model) -> None:
    pipeline = load_pipeline("recommended")
    [stage] = [s for s in pipeline.stages if isinstance(s, AdaptiveMisinformation)]
    stage.strict_fpr = 1.0
    g = guarded(model, pipeline)
    flag(g, "thief")
    digits = TASK.data.X_eval[:30]
    assert np.all(one_by_one(g, "thief", digits) != model.predict(digits))


def test_strict_fpr_below_fpr_is_refused() -> None:
    with pytest.raises(ConfigError, match="strict_fpr must be >= fpr"):
        AdaptiveMisinformation(fpr=0.01, strict_fpr=0.005)


def test_without_misinformation_strict_marks_every_new_row_but_not_known_ones(model) -> None:
    g = guarded(model, Pipeline([OodRateMonitor(), Watermark(rate=1.0)]))
    known = TASK.data.X_eval[:5]
    one_by_one(g, "thief", known)
    flag(g, "thief")
    reply = g.answer("thief", np.concatenate([known, TASK.data.X_eval[5:10]]))
    assert reply.answers.flagged.tolist() == [False] * 5 + [True] * 5
