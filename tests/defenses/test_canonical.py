"""Keyed choices are made on canonical rows: a twin of a query gets exactly its answer.

A twin is value-equal (``-0.0`` for ``0.0``, a float32 round-trip) or equal within the task's
precision (``+1e-9``; ``+0.4`` on a digits pixel that is 0 in every training row, an integer
column). If a twin could be answered differently from its original, one extra query would
tell a thief which answers were misinformed or watermarked.
"""

from collections.abc import Callable

import httpx
import numpy as np
import pytest

from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.keyed import canonical
from modeltheft.defenses.watermark import load_records
from modeltheft.service.runner import BackgroundServer
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim, train_victim
from tests.conftest import auth

TASK = digits_task().held_out()


def queries(seed: int = 0, n_real: int = 40, n_odd: int = 60) -> np.ndarray:
    """Real digits, then out-of-distribution rows (noise with zero pixels, blends)."""
    rng = np.random.default_rng(seed)
    real = digits_task().data.X_eval[rng.permutation(len(digits_task().data.X_eval))[:n_real]]
    noise = rng.random((n_odd // 2, 64)) * (rng.random((n_odd // 2, 64)) < 0.6)
    lam = rng.random((n_odd - n_odd // 2, 1))
    blends = lam * rng.random((len(lam), 64)) + (1 - lam) * real[rng.integers(0, n_real, len(lam))]
    return np.concatenate([real, noise, blends])


def twins(X: np.ndarray) -> dict[str, np.ndarray]:
    """Each kind of twin of the rows ``X``."""
    zero = np.where(X == 0.0, -0.0, X)
    assert np.signbit(zero).any()
    tiny = X.copy()
    tiny[:, 20] += 1e-9
    integer = X.copy()
    # Pixel 0 is 0 in every training digit: an integer column, where +0.4 stays within the
    # precision of rows that hold an integer there (the real digits: 0).
    on_grid = X[:, 0] == np.round(X[:, 0])
    assert on_grid.sum() >= 40
    integer[on_grid, 0] += 0.4
    return {
        "negative-zero": zero,
        "float32": X.astype(np.float32).astype(np.float64),
        "tiny": tiny,
        "integer-pixel": integer,
    }


def test_canonical_rounds_to_float32_and_grid_and_drops_the_sign_of_zero() -> None:
    X = np.array([[-0.0, 0.1, 3.4, 0.50000001]])
    out = canonical(X, np.array([0.0, 0.0, 1.0, 2.0**-12]))
    assert out[0, 0] == 0.0 and not np.signbit(out[0, 0])
    assert out[0, 1] == float(np.float32(0.1))
    assert out[0, 2] == 3.0 and out[0, 3] == 0.5
    assert not np.signbit(canonical(np.array([[-0.3]]), 1.0)).any()


def test_task_resolution_per_column() -> None:
    r = TASK.resolution
    assert r[0] == 1.0  # always 0 in training: integer-valued
    assert r[20] == 1.0 / 4096  # bounded in [0, 1]


@pytest.fixture(scope="module")
def holdout_model():
    return train_victim("rf", split_name="holdout").model


def recommended(model, seed: int = 0) -> GuardedModel:
    """``recommended`` with seeded state: the same HMAC keys in every instance."""
    store = MemoryStore(np.random.default_rng(seed))
    return GuardedModel(model, load_pipeline("recommended"), store, seed=seed, task=TASK)


def serve_one_by_one(model, X: np.ndarray, client: str, seed: int = 0):
    guarded = recommended(model, seed)
    replies = [guarded.answer(client, row[None, :]) for row in X]
    labels = np.array([r.labels[0] for r in replies])
    probabilities = np.array([r.answers.probabilities[0] for r in replies])
    return labels, probabilities, guarded


def test_twins_get_exactly_the_originals_answers_under_recommended(holdout_model) -> None:
    X = queries()
    labels, probabilities, guarded = serve_one_by_one(holdout_model, X, "thief")
    truth = holdout_model.predict(X)
    altered = labels != truth
    assert altered.sum() >= 20  # misinformation and watermarks are exercised
    records = load_records(guarded.store, "thief")
    assert len(records.labels) >= 10  # watermark records keep the canonical rows
    assert np.array_equal(records.X, canonical(records.X, TASK.resolution))
    for kind, Y in twins(X).items():
        # The same stream again from another key (same state trajectory), and each twin sent
        # by the same key right after its original, in one batch with it.
        twin_labels, twin_probabilities, _ = serve_one_by_one(holdout_model, Y, "twin")
        assert np.array_equal(twin_labels, labels), kind
        assert np.array_equal(twin_probabilities, probabilities), kind
        pairs = recommended(holdout_model)
        for x, y in zip(X, Y, strict=True):
            reply = pairs.answer("pairs", np.stack([x, y]))
            assert reply.labels[0] == reply.labels[1], kind
            assert np.array_equal(*reply.answers.probabilities), kind


def test_twins_get_the_same_answers_over_http(
    live_server: Callable[..., BackgroundServer], victim: LoadedVictim
) -> None:
    server = live_server("recommended")
    X = queries(seed=1, n_real=10, n_odd=20)
    zero = np.where(X == 0.0, -0.0, X)
    tiny = X.copy()
    tiny[:, 20] += 1e-9
    answers: dict[str, list] = {}
    for client, rows in (("alice", X), ("bob", np.concatenate([zero[:15], tiny[15:]]))):
        got = []
        with httpx.Client(base_url=server.url, headers=auth(client)) as http:
            for row in rows:
                # Python's json writes -0.0 as "-0.0": the server reads a negative zero.
                response = http.post("/v1/predict", json={"inputs": [row.tolist()]})
                assert response.status_code == 200, response.text
                got.append(response.json()["predictions"][0])
        answers[client] = got
    assert answers["alice"] == answers["bob"]
    truth = victim.model.predict(X)
    assert sum(p["label"] != t for p, t in zip(answers["alice"], truth, strict=True)) >= 5
