"""A key's quota is exact under concurrent load across worker processes (issue #6 target:
4 workers, 32 concurrent clients, no overshoot, no double counting, no lost update)."""

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import auth
from tests.service.processes import Server, serve_processes

QUOTA = 100
BUCKET = f"""[[stages]]
type = "token_bucket"
capacity = {QUOTA}
refill_per_hour = 0
"""
ROW = [[0.5] * 64]


@pytest.fixture
def start_server(victim_path: Path, tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    defense = tmp_path / "bucket.toml"
    defense.write_text(BUCKET)
    with serve_processes(victim_path, tmp_path, str(defense), workers=4) as start:
        yield start


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_quota_is_exact_with_4_workers_and_32_clients(
    start_server: Callable[[str], Server],
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    if backend == "sqlite":
        state = f"sqlite:///{tmp_path / 'quota.db'}"
    else:
        import redis

        state = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/5"
        with redis.Redis.from_url(state) as client:
            client.flushdb()
    server = start_server(state)
    sent = 3 * QUOTA

    def one(_: int) -> int:
        with httpx.Client(timeout=30) as http:
            return http.post(
                f"{server.url}/v1/predict", json={"inputs": ROW}, headers=auth()
            ).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(sent)))
    assert statuses.count(200) == QUOTA  # not one more, not one less
    assert statuses.count(429) == sent - QUOTA
    assert set(statuses) == {200, 429}
