"""Request metrics at ``/metrics``, the access log, and what neither may contain (keys, names).

In-process: exact counts after known requests, refusal reasons, the rows answered and altered,
low-cardinality labels, the access record's fields, the redaction filter and the cost of the
middleware. As processes: ``serve --workers 2 --log-format json`` counts every worker's
requests in any one scrape, and every line it prints is JSON without a key in it.
"""

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modeltheft.errors import ConfigError
from modeltheft.service import Settings
from modeltheft.service.app import SETTINGS_ENV, app_from_env, settings_env
from modeltheft.service.auth import KeyRing
from modeltheft.service.observability import (
    BUCKETS,
    MULTIPROC_ENV,
    HttpMetrics,
    ObservabilityMiddleware,
    RedactSecrets,
    log_config,
    multiprocess_metrics,
    reap_dead_workers,
    redact,
)
from modeltheft.service.runner import BackgroundServer
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim
from tests.conftest import KEYS, METRICS_KEY, auth, metrics_auth
from tests.service.processes import Server, launch

ROW = [0.5] * 64
WRONG_KEY = "wrong-key-5555555555"
REASONS = {
    "unauthenticated",
    "blocked",
    "timeout",
    "too_large",
    "invalid",
    "rate_limited",
    "unavailable",
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) → value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict, name: str, **labels: str) -> float:
    """One sample's value; 0 if absent."""
    return scrape.get((name, frozenset(labels.items())), 0.0)


def total(scrape: dict, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples that carry ``labels`` (others free)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and wanted <= ls)


def label_values(scrape: dict) -> set[str]:
    return {v for (_, ls) in scrape for _, v in ls}


@pytest.fixture
def bucket_client(make_app: Callable[..., FastAPI], tmp_path: Path) -> Iterator[TestClient]:
    """A service whose token bucket holds 5 queries and never refills."""
    path = tmp_path / "bucket.toml"
    path.write_text('[[stages]]\ntype = "token_bucket"\ncapacity = 5\nrefill_per_hour = 0\n')
    with TestClient(make_app(defense=str(path))) as client:
        yield client


def predict(client: TestClient, rows: int, headers: dict[str, str] | None = None, **kw):
    return client.post("/v1/predict", json={"inputs": [ROW] * rows}, headers=headers, **kw)


def test_metrics_count_each_request_once_with_its_route_status_and_reason(
    bucket_client: TestClient,
) -> None:
    client = bucket_client
    statuses = [predict(client, 2, auth()).status_code for _ in range(2)]  # 4 of 5 tokens
    statuses.append(predict(client, 1, auth("bob")).status_code)  # bob's bucket is his own
    statuses += [predict(client, 2, auth()).status_code for _ in range(2)]  # 1 token left
    statuses.append(predict(client, 1, {"Authorization": f"Bearer {WRONG_KEY}"}).status_code)
    statuses.append(predict(client, 1, {"Authorization": KEYS["alice"]}).status_code)  # no scheme
    statuses.append(predict(client, 1).status_code)  # no header
    statuses.append(client.post("/v1/predict", content=b"{not json", headers=auth()).status_code)
    statuses.append(predict(client, 1, auth(), params={"api_key": KEYS["bob"]}).status_code)
    statuses.append(
        client.post("/v1/predict", json={"inputs": [[1] * 3]}, headers=auth()).status_code
    )
    statuses.append(client.get(f"/v1/predict/{KEYS['alice']}").status_code)  # hostile paths
    statuses.append(client.get(f"/alice/{KEYS['bob']}/x").status_code)
    statuses.append(client.request("BREW", "/healthz").status_code)  # hostile method
    statuses.append(client.get("/healthz").status_code)
    assert statuses == [200, 200, 200, 429, 429, 401, 401, 401, 422, 200, 422, 404, 404, 405, 200]

    scrape = samples(client.get("/metrics", headers=metrics_auth()).text)
    requests = "modeltheft_http_requests_total"
    assert value(scrape, requests, route="/v1/predict", method="POST", status="200") == 4
    assert value(scrape, requests, route="/v1/predict", method="POST", status="401") == 3
    assert value(scrape, requests, route="/v1/predict", method="POST", status="422") == 2
    assert value(scrape, requests, route="/v1/predict", method="POST", status="429") == 2
    assert value(scrape, requests, route="other", method="GET", status="404") == 2
    assert value(scrape, requests, route="/healthz", method="other", status="405") == 1
    assert value(scrape, requests, route="/healthz", method="GET", status="200") == 1
    assert total(scrape, requests) == len(statuses)  # the scrape counts after it answers

    refusals = {r: value(scrape, "modeltheft_refusals_total", reason=r) for r in REASONS}
    assert refusals == {
        **dict.fromkeys(REASONS, 0.0),
        "unauthenticated": 3,
        "invalid": 2,
        "rate_limited": 2,
    }
    assert value(scrape, "modeltheft_queries_total") == 2 + 2 + 1 + 1  # rows answered
    assert value(scrape, "modeltheft_answers_altered_total") == 0  # a rate limit alters nothing

    duration = "modeltheft_http_request_duration_seconds"
    assert total(scrape, f"{duration}_count") == len(statuses)
    assert value(scrape, f"{duration}_count", route="/v1/predict") == 11
    assert value(scrape, f"{duration}_bucket", route="/v1/predict", le="+Inf") == 11
    assert 0 < value(scrape, f"{duration}_sum", route="/v1/predict") < 11 * 5.0
    les = {dict(ls)["le"] for (n, ls) in scrape if n == f"{duration}_bucket"}
    assert les == {*(str(b) for b in BUCKETS), "+Inf"}
    assert value(scrape, "modeltheft_http_requests_in_progress") == 1  # the scrape itself
    # The store's alert counters are still there.
    assert ("modeltheft_extraction_alerts_total", frozenset({("detector", "prada")})) in scrape

    labels = label_values(scrape)
    assert not labels & {*KEYS.values(), WRONG_KEY, *KEYS}  # no key, no client name
    routes = {v for (_, ls) in scrape for k, v in ls if k == "route"}
    assert routes == {"/v1/predict", "/healthz", "other"}
    methods = {v for (_, ls) in scrape for k, v in ls if k == "method"}
    assert methods == {"POST", "GET", "other"}


def test_a_scrape_counts_the_scrapes_before_it(client: TestClient) -> None:
    for expected in range(3):
        scrape = samples(client.get("/metrics", headers=metrics_auth()).text)
        assert total(scrape, "modeltheft_http_requests_total", route="/metrics") == expected


def test_an_unexpected_error_is_counted_as_500(make_app: Callable[..., FastAPI]) -> None:
    app = make_app()

    def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
        scrape = samples(client.get("/metrics", headers=metrics_auth()).text)
    requests = "modeltheft_http_requests_total"
    assert value(scrape, requests, route="/boom", method="GET", status="500") == 1
    assert value(scrape, "modeltheft_http_requests_in_progress") == 1  # decremented


def test_each_app_has_its_own_registry(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app()) as first, TestClient(make_app()) as second:
        assert first.get("/healthz").status_code == 200
        scrape = samples(second.get("/metrics", headers=metrics_auth()).text)
    assert value(scrape, "modeltheft_http_requests_total", route="/healthz", method="GET") == 0


def test_answers_altered_counts_rows_whose_label_a_defense_changed(
    make_app: Callable[..., FastAPI], tmp_path: Path, victim: LoadedVictim
) -> None:
    path = tmp_path / "noise.toml"
    path.write_text('[[stages]]\ntype = "gaussian_noise"\nsigma = 0.6\n')
    X = digits_task().data.X_eval[:60]
    with TestClient(make_app(defense=str(path), inference="sklearn")) as client:
        response = client.post("/v1/predict", json={"inputs": X.tolist()}, headers=auth())
        labels = np.array([p["label"] for p in response.json()["predictions"]])
        scrape = samples(client.get("/metrics", headers=metrics_auth()).text)
    changed = int(np.count_nonzero(labels != victim.model.predict(X)))
    assert 0 < changed < len(X)
    assert value(scrape, "modeltheft_answers_altered_total") == changed
    assert value(scrape, "modeltheft_queries_total") == len(X)


def test_access_records_have_their_fields_and_no_key(
    bucket_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = bucket_client
    with caplog.at_level(logging.INFO, logger="modeltheft"):
        predict(client, 2, auth(), params={"key": KEYS["alice"]})
        predict(client, 1, {"Authorization": f"Bearer {WRONG_KEY}"})
        predict(client, 1, {"Authorization": f"Token {KEYS['bob']}"})  # malformed
        client.get(f"/{KEYS['alice']}")
    records = [r for r in caplog.records if r.name == "modeltheft.access"]
    fields = [(r.method, r.route, r.status, r.client, r.rows) for r in records]
    assert fields == [
        ("POST", "/v1/predict", 200, "alice", 2),
        ("POST", "/v1/predict", 401, "-", 0),
        ("POST", "/v1/predict", 401, "-", 0),
        ("GET", "other", 404, "-", 0),
    ]
    assert all(isinstance(r.duration_ms, float) and r.duration_ms >= 0 for r in records)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (*KEYS.values(), WRONG_KEY):
        assert secret not in text


def test_no_access_records_when_the_access_log_is_off(
    make_app: Callable[..., FastAPI], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        TestClient(make_app(access_log=False)) as client,
        caplog.at_level(logging.INFO, logger="modeltheft"),
    ):
        assert predict(client, 1, auth()).status_code == 200
        scrape = samples(client.get("/metrics", headers=metrics_auth()).text)
    assert not [r for r in caplog.records if r.name == "modeltheft.access"]
    assert value(scrape, "modeltheft_queries_total") == 1  # metrics are kept


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123", "Authorization: Bearer [REDACTED]"),
        ("headers={'authorization': 'k3y'}", "headers={'authorization': '[REDACTED]'}"),
        ("GET /x?api_key=s3cret&y=1", "GET /x?api_key=[REDACTED]&y=1"),
        ("got bearer   xyz, then", "got bearer   [REDACTED], then"),
        ("Bearer [REDACTED]", "Bearer [REDACTED]"),  # idempotent
        ("POST /v1/predict 200 client=alice rows=3", "POST /v1/predict 200 client=alice rows=3"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_the_redaction_filter_cleans_messages_extras_and_tracebacks() -> None:
    secret = KEYS["alice"]
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "sent Bearer %s", (secret,), None)
    record.header = f"Authorization: Bearer {secret}"
    try:
        raise ValueError(f"token={secret}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert RedactSecrets().filter(record)
    formatted = logging.Formatter().format(record)
    assert secret not in formatted and secret not in record.header
    assert "sent Bearer [REDACTED]" in formatted and "token=[REDACTED]" in formatted


LOG_SCRIPT = """
import logging.config, sys
from modeltheft.service.observability import log_config
logging.config.dictConfig(log_config(sys.argv[1]))
logging.getLogger("uvicorn.error").info("Bearer %s", sys.argv[2])
logging.getLogger("uvicorn.access").info("an access line uvicorn would write")
logging.getLogger("modeltheft.access").info("a request", extra={"status": 200})
logging.getLogger("modeltheft.state").debug("not shown at info")
logging.getLogger("somelib").warning("a library's warning")
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_config_applies_one_redacting_handler_to_uvicorn_and_us(log_format: str) -> None:
    command = [sys.executable, "-c", LOG_SCRIPT, log_format, KEYS["alice"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert KEYS["alice"] not in result.stderr and "Bearer [REDACTED]" in lines[0]
    assert "uvicorn would write" not in result.stderr
    if log_format == "json":
        parsed = [json.loads(line) for line in lines]
        # Access records are written in batches (every 0.5 s, at exit): after the others.
        assert [p["logger"] for p in parsed] == ["uvicorn.error", "somelib", "modeltheft.access"]
        assert parsed[2]["status"] == 200 and parsed[1]["level"] == "WARNING"
    with pytest.raises(ConfigError, match="text or json"):
        log_config("yaml")


def test_multiprocess_metrics_makes_and_removes_a_private_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "/somewhere/else")
    with multiprocess_metrics() as folder:
        assert os.environ[MULTIPROC_ENV] == str(folder)
        assert folder.is_dir() and not any(folder.iterdir())
        assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
    assert not folder.exists()
    assert os.environ[MULTIPROC_ENV] == "/somewhere/else"


def test_a_killed_runs_metrics_folder_is_removed_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 leaves the folder; the next start removes it, and only folders that are ours."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from modeltheft.service.observability import multiprocess_metrics\n"
        "with multiprocess_metrics(Path(sys.argv[1])) as folder:\n"
        "    (folder / 'counter_1.db').write_bytes(b'x')\n"
        "    print(folder, flush=True)\n"
        "    time.sleep(60)\n"
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    left = Path(killed.stdout.readline().strip())
    killed.kill()
    killed.wait()
    killed.stdout.close()
    assert left.is_dir() and left.parent == tmp_path
    live = tmp_path / f"modeltheft-metrics-{os.getpid()}-abc123"  # a run still going
    others = [tmp_path / "modeltheft-metrics-x", tmp_path / "other-12345-abc"]
    for folder in [live, *others]:
        folder.mkdir()
    (tmp_path / f"modeltheft-metrics-{killed.pid}-link").symlink_to(live)
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with multiprocess_metrics(tmp_path) as fresh:
        assert not left.exists()
        assert fresh.name.startswith(f"modeltheft-metrics-{os.getpid()}-")
        assert live.is_dir() and all(folder.is_dir() for folder in others)
        assert (tmp_path / f"modeltheft-metrics-{killed.pid}-link").is_symlink()
    assert not fresh.exists()


def test_reaping_drops_the_live_gauges_of_exited_workers_only(tmp_path: Path) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    names = [f"gauge_livesum_{exited.pid}.db", f"counter_{exited.pid}.db"]
    names.append(f"gauge_livesum_{os.getpid()}.db")
    for name in names:
        (tmp_path / name).write_bytes(b"")
    reap_dead_workers(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_workers_inherit_the_access_log_setting(
    monkeypatch: pytest.MonkeyPatch, victim_path: Path
) -> None:
    monkeypatch.setenv("MODELTHEFT_API_KEYS", f"alice:{KEYS['alice']}")
    settings = Settings(
        keys=KeyRing.from_pairs(KEYS), model_path=victim_path, access_log=False, seed=1
    )
    monkeypatch.setenv(SETTINGS_ENV, settings_env(settings, None))
    assert app_from_env().state.settings.access_log is False


async def _trivial(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def per_request_seconds(app, n: int = 4000, repeats: int = 5) -> float:
    """The best-of-``repeats`` mean time of one request through ``app`` (no server, no I/O)."""

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        return None

    async def run() -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(n):
                scope = {"type": "http", "method": "GET", "path": "/x", "state": {}}
                await app(scope, receive, send)
            best = min(best, (time.perf_counter() - start) / n)
        return best

    return asyncio.run(run())


def test_the_middleware_costs_microseconds() -> None:
    """The budget is 25 µs; the bound leaves room for a loaded test machine."""
    bare = per_request_seconds(_trivial)
    measured = per_request_seconds(
        ObservabilityMiddleware(_trivial, HttpMetrics(), access_log=False)
    )
    assert measured - bare < 100e-6


# --- as processes -----------------------------------------------------------------------


@pytest.fixture
def json_server(victim_path: Path, tmp_path: Path) -> Iterator[Server]:
    """``serve --workers 2 --log-format json`` (stdout and stderr in one log); killed at exit."""
    env = {**os.environ, "MODELTHEFT_API_KEYS": f"alice:{KEYS['alice']},bob:{KEYS['bob']}"}
    env["MODELTHEFT_METRICS_KEY"] = METRICS_KEY
    env.pop(SETTINGS_ENV, None)
    env.pop(MULTIPROC_ENV, None)
    args = ["--model", str(victim_path), "--state", f"sqlite:///{tmp_path / 's.db'}"]
    server = launch([*args, "--workers", "2", "--log-format", "json"], tmp_path / "serve.log", env)
    try:
        yield server
    finally:
        server.kill()


def json_lines(log: Path) -> list[dict]:
    """Every line of the log, parsed (fails on a line that is not a JSON object)."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


def wait_for_access_records(
    log: Path, count: int, status: int | None = None, least: int = 0
) -> list[dict]:
    """The access records once there are ``count`` (and ``least`` with ``status``): each
    worker writes its own every 0.5 s, so one worker's lines may come before the other's."""
    deadline = time.monotonic() + 10
    while True:
        records = [r for r in json_lines(log) if r.get("logger") == "modeltheft.access"]
        enough = sum(1 for r in records if status is None or r["status"] == status) >= least
        if (len(records) >= count and enough) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_two_workers_are_counted_in_one_scrape_and_log_json_without_keys(
    json_server: Server,
) -> None:
    url = json_server.url

    def post(_: int) -> int:  # a new connection each: the workers share the load
        body = {"inputs": [ROW, ROW]}
        return httpx.post(f"{url}/v1/predict", json=body, headers=auth(), timeout=30).status_code

    sent = 0
    with ThreadPoolExecutor(8) as pool:
        while True:
            assert list(pool.map(post, range(40))) == [200] * 40
            sent += 40
            pids = {r["process"] for r in wait_for_access_records(json_server.log, sent)}
            if len(pids) >= 2 or sent >= 200:
                break
    assert len(pids) == 2, "the requests all went to one worker"

    refused = [
        httpx.post(f"{url}/v1/predict", json={"inputs": [ROW]}, headers=h).status_code
        for h in (
            {"Authorization": f"Bearer {WRONG_KEY}"},
            {"Authorization": f"Bearer{KEYS['alice']}"},  # malformed: no space
            {"Authorization": f"Basic {KEYS['bob']}"},
        )
    ]
    assert refused == [401, 401, 401]
    assert httpx.get(f"{url}/v1/model?api_key={KEYS['alice']}").status_code == 200
    assert httpx.get(f"{url}/{WRONG_KEY}").status_code == 404

    for _ in range(4):  # whichever worker answers the scrape, it adds up both
        scrape = samples(httpx.get(f"{url}/metrics", headers=metrics_auth(), timeout=30).text)
        requests = "modeltheft_http_requests_total"
        assert value(scrape, requests, route="/v1/predict", method="POST", status="200") == sent
        assert value(scrape, requests, route="/v1/predict", method="POST", status="401") == 3
        assert value(scrape, requests, route="other", method="GET", status="404") == 1
        assert value(scrape, "modeltheft_refusals_total", reason="unauthenticated") == 3
        assert value(scrape, "modeltheft_queries_total") == 2 * sent
        duration = "modeltheft_http_request_duration_seconds_count"
        assert value(scrape, duration, route="/v1/predict") == sent + 3
        assert value(scrape, "modeltheft_http_requests_in_progress") == 1  # livesum: the scrape
        assert not label_values(scrape) & {*KEYS.values(), WRONG_KEY, *KEYS}

    records = wait_for_access_records(json_server.log, sent + 6, status=401, least=3)
    lines = json_lines(json_server.log)  # every line is JSON, uvicorn's and the banner too
    assert {"uvicorn.error", "modeltheft.service", "modeltheft.access"} <= {
        line["logger"] for line in lines
    }
    assert all({"time", "level", "logger", "message", "process"} <= set(line) for line in lines)
    for record in records:
        assert {"method", "route", "status", "client", "rows", "duration_ms"} <= set(record)
    answered = [r for r in records if r["status"] == 200 and r["route"] == "/v1/predict"]
    assert len(answered) == sent and {r["client"] for r in answered} == {"alice"}
    assert all(r["rows"] == 2 for r in answered)
    unauthenticated = [r for r in records if r["status"] == 401]
    assert len(unauthenticated) == 3 and {r["client"] for r in unauthenticated} == {"-"}
    text = json_server.log.read_text()
    for secret in (*KEYS.values(), WRONG_KEY):
        assert secret not in text
    assert "api_key" not in text  # the query string is never logged


def test_a_client_that_leaves_mid_body_is_a_499_not_a_500(
    live_server: Callable[..., BackgroundServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = live_server("none")
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + KEYS["alice"].encode() + b"\r\nContent-Length: 1000\r\n\r\n"
    )
    with caplog.at_level(logging.INFO), socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head + b'{"inputs": [[0.5')
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = httpx.get(server.url + "/metrics", headers=metrics_auth()).text
        if 'status="499"' in text:
            break
        time.sleep(0.05)
    assert 'route="/v1/predict",status="499"} 1.0' in text and 'status="500"' not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_access_record_escapes_an_odd_client_name(caplog: pytest.LogCaptureFixture) -> None:
    """Names are checked when keys load; the access record escapes anything odd anyway."""
    from modeltheft.service.observability import HttpMetrics

    async def app(scope: dict, receive: object, send: Callable) -> None:
        scope["state"]["client"] = "evil\r\nGET /v1/predict 200 client=alice"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    asgi = ObservabilityMiddleware(app, HttpMetrics())
    scope = {"type": "http", "method": "GET", "path": "/x", "state": {}}

    async def send(message: dict) -> None:
        return None

    with caplog.at_level(logging.INFO, logger="modeltheft.access"):
        asyncio.run(asgi(scope, None, send))
    [record] = [r for r in caplog.records if r.name == "modeltheft.access"]
    line = logging.Formatter("%(message)s").format(record)
    assert "\n" not in line and "\r" not in line and " client=alice" not in line
    assert "client=evil\\x0d\\x0aGET\\x20/v1/predict" in line
