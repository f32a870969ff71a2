"""A group's requests deferred to its commit, their rows predicted in one call: the same answers
and the same stored state as each request predicted alone (#14: throughput)."""

import asyncio
import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np

from modeltheft.defenses.guarded import GuardedModel, Reply
from modeltheft.defenses.presets import load_pipeline
from modeltheft.errors import Blocked, RateLimited
from modeltheft.state import SqliteStore
from modeltheft.tasks import digits_task
from modeltheft.victim import train_victim
from modeltheft.victim.fast import fast_model


class Counted:
    """The served model, counting its calls; ``alone`` refuses more rows than one request
    sends (so it fails the probe: not batch-invariant)."""

    def __init__(self, model: object, alone: bool) -> None:
        self.model, self.alone, self.calls = model, alone, 0
        self.classes_ = model.classes_  # type: ignore[attr-defined]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.alone and len(X) > 2:
            raise ValueError("one request's rows at a time")
        self.calls += 1
        return self.model.predict_proba(X)  # type: ignore[attr-defined]


def guarded(path: Path, model: Counted) -> GuardedModel:
    return GuardedModel(
        model,  # type: ignore[arg-type]
        load_pipeline("recommended"),
        store=SqliteStore(path),
        seed=3,
        task=digits_task(),
        audit_retention=3600,
    )


def traffic(seed: int) -> list[list[tuple[str, np.ndarray]]]:
    """Turns of concurrent requests: honest digits and uniform noise from a few keys."""
    rng = np.random.default_rng(seed)
    X = digits_task().data.X_eval
    turns = []
    for _ in range(60):
        turn = []
        for _ in range(int(rng.integers(1, 6))):
            client = f"c{int(rng.integers(6))}"
            if client in ("c4", "c5"):  # thieves: uniform noise, one or two rows
                rows = rng.integers(0, 17, size=(int(rng.integers(1, 3)), 64)).astype(float)
            else:
                rows = X[rng.integers(len(X), size=1)]
            turn.append((client, rows))
        turns.append(turn)
    return turns


def replay(model: GuardedModel, turns: list[list[tuple[str, np.ndarray]]]) -> list[object]:
    async def one(client: str, X: np.ndarray) -> object:
        try:
            reply: Reply = await model.answer_shared(client, X)
        except (Blocked, RateLimited) as refused:
            return type(refused).__name__
        headers = {k: v for k, v in reply.headers.items() if not k.lower().startswith("ratelimit")}
        return reply.labels.tolist(), reply.answers.probabilities.tobytes(), headers

    async def main() -> list[object]:
        out: list[object] = []
        for turn in turns:
            out += await asyncio.gather(*(one(client, X) for client, X in turn))
        return out

    return asyncio.run(main())


def stored(path: Path) -> list[object]:
    """What the store kept (but the alerts' and audit's times)."""
    with closing(sqlite3.connect(path)) as conn:
        return [
            conn.execute("SELECT key, idx, item FROM lists WHERE key NOT LIKE 'alerts%' "
                         "ORDER BY key, idx").fetchall(),
            conn.execute("SELECT key, member FROM sets ORDER BY key, member").fetchall(),
            conn.execute("SELECT key, value FROM counters ORDER BY key").fetchall(),
            [
                (client, json.loads(entry) | {"time": None})
                for client, entry in conn.execute("SELECT client, entry FROM audit ORDER BY id")
            ],
        ]  # fmt: skip


def test_a_groups_rows_predicted_together_answer_as_each_alone(tmp_path: Path) -> None:
    forest = fast_model(train_victim("rf").model).model
    template = tmp_path / "template.db"
    guarded(template, Counted(forest, alone=True)).store.close()  # its secrets, for both
    paths = {name: tmp_path / f"{name}.db" for name in ("together", "alone")}
    for path in paths.values():
        shutil.copy(template, path)
    models = {name: Counted(forest, alone=name == "alone") for name in paths}
    services = {name: guarded(paths[name], models[name]) for name in paths}
    assert services["together"]._together and not services["alone"]._together
    for model in models.values():
        model.calls = 0  # batch_invariant's probe called them
    turns = traffic(0)
    answers = {name: replay(services[name], turns) for name in paths}
    for service in services.values():
        service.store.close()

    requests = sum(len(turn) for turn in turns)
    assert models["alone"].calls == requests
    assert models["together"].calls == len(turns)  # one call a turn (a group)
    assert answers["together"] == answers["alone"]
    assert stored(paths["together"]) == stored(paths["alone"])
