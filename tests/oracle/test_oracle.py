from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.errors import BudgetExhausted, ConfigError, OracleError
from modeltheft.oracle import HttpOracle, LocalOracle, QueryLog
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import get_task
from modeltheft.victim import LoadedVictim
from tests.conftest import KEYS
from tests.oracle.standins import fitted_models


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 64))


def test_budget_is_never_exceeded(victim: LoadedVictim) -> None:
    oracle = LocalOracle(GuardedModel(victim.model, load_pipeline("none")), budget=10)
    oracle.query(rows(8))
    with pytest.raises(BudgetExhausted, match="only 2 left"):
        oracle.query(rows(3))
    assert oracle.spent == 8
    oracle.query(rows(2))
    assert oracle.remaining == 0


def test_local_oracle_counts_refusals(victim: LoadedVictim) -> None:
    guarded = GuardedModel(victim.model, load_pipeline("lab"), seed=0)
    oracle = LocalOracle(guarded, budget=400)
    for _ in range(400):
        oracle.query(rows(1, seed=oracle.spent))
    assert 150 < oracle.answered < 250
    assert oracle.refused == 400 - oracle.answered


def test_http_oracle_resumes_from_its_log_without_paying_twice(
    live_server: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    server = live_server("none")
    guarded: GuardedModel = server.app.state.guarded
    rows_answered: list[int] = []
    answer = guarded.answer_shared  # what the service's routes await

    async def counting(client_id: str, X: np.ndarray):
        rows_answered.append(len(X))
        return await answer(client_id, X)

    guarded.answer_shared = counting  # type: ignore[method-assign]
    log_path = tmp_path / "q.jsonl"
    X = rows(30)
    first = HttpOracle(server.url, KEYS["alice"], budget=30, log=QueryLog(log_path))
    a = first.query(X[:20])
    first.close()
    assert sum(rows_answered) == 20
    second = HttpOracle(server.url, KEYS["alice"], budget=30, log=QueryLog(log_path))
    b = second.query(X[:20])
    c = second.query(X[20:])
    second.close()
    assert sum(rows_answered) == 30  # only the 10 new rows reached the service
    assert second.reused == 20 and second.spent == 30
    assert np.array_equal(a.labels, b.labels)
    assert np.allclose(a.probabilities, b.probabilities)
    assert len(log_path.read_text().splitlines()) == 30
    assert c.probabilities.shape == (10, 10)


def test_http_oracle_records_429_as_refused(live_server: Callable[..., BackgroundServer]) -> None:
    server = live_server("lab")
    oracle = HttpOracle(server.url, KEYS["bob"], budget=300)
    for i in range(300):
        oracle.query(rows(1, seed=i))
    oracle.close()
    assert oracle.answered + oracle.refused == 300
    assert 0.5 < oracle.answered / 300 < 0.75


def test_http_oracle_errors_are_clear(live_server: Callable[..., BackgroundServer]) -> None:
    server = live_server("none")
    bad = HttpOracle(server.url, "wrong", budget=5)
    with pytest.raises(OracleError, match="rejected the key"):
        bad.query(rows(1))
    with pytest.raises(ConfigError, match="http"):
        HttpOracle("ftp://x", "k", budget=1)
    unreachable = HttpOracle("http://127.0.0.1:9", "k", budget=1, retries=1)
    with pytest.raises(OracleError, match="cannot reach"):
        unreachable.query(rows(1))


def test_torn_last_log_line_is_ignored_but_corruption_is_not(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"query": "ab", "label": 1, "probabilities": null, "refused": false}\n{"que')
    assert QueryLog(path).loaded == 1
    path.write_text(
        'garbage\n{"query": "ab", "label": 1, "probabilities": null, "refused": false}\n'
    )
    with pytest.raises(ConfigError, match="corrupt at line 1"):
        QueryLog(path)


@pytest.mark.parametrize(("name", "task"), [("bc", "breast-cancer"), ("iris-names", "iris")])
def test_local_oracle_answers_indices_into_the_models_classes(
    name: str, task: str, tmp_path: Path
) -> None:
    model = fitted_models()[name]
    data = get_task(task).data
    assert data is not None
    X = np.array(data.X_eval[:20])
    log = QueryLog(tmp_path / "q.jsonl")
    oracle = LocalOracle(GuardedModel(model, load_pipeline("none")), budget=40, log=log)
    answers = oracle.query(X)
    assert oracle.task.classes.tolist() == model.classes_.tolist()
    assert answers.labels.dtype.kind == "i" and answers.probabilities.shape == (
        20,
        len(model.classes_),
    )
    assert np.array_equal(oracle.task.classes[answers.labels], model.predict(X))
    resumed = LocalOracle(
        GuardedModel(model, load_pipeline("none")), budget=40, log=QueryLog(tmp_path / "q.jsonl")
    )
    assert np.array_equal(resumed.query(X).labels, answers.labels) and resumed.reused == 20
