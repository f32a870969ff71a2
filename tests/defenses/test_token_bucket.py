"""The token-bucket limiter: deterministic bursts, refill, whole-request admission, headers."""

from pathlib import Path

import numpy as np
import pytest

from modeltheft.defenses import STAGES, DefenseContext, Pipeline, load_pipeline
from modeltheft.defenses.ratelimit import TokenBucketRateLimit
from modeltheft.errors import ConfigError, RateLimited
from modeltheft.state import MemoryStore


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bucket(capacity: int = 10, refill_per_hour: float = 3600.0, **kw: object) -> tuple:
    """A limiter refilling one token per second (by default) on a fake clock."""
    clock = FakeClock()
    limit = TokenBucketRateLimit(capacity=capacity, refill_per_hour=refill_per_hour, **kw)
    limit.clock = clock
    return limit, clock


def context(client: str = "c", store: MemoryStore | None = None) -> DefenseContext:
    return DefenseContext(client, np.random.default_rng(0), store or MemoryStore())


def test_is_registered_and_cites_its_source() -> None:
    assert STAGES["token_bucket"] is TokenBucketRateLimit
    assert TokenBucketRateLimit.paper and TokenBucketRateLimit.honest_cost


def test_burst_up_to_capacity_then_refused_with_exact_retry_after() -> None:
    limit, _ = bucket(capacity=10)
    ctx = context()
    for _ in range(10):
        limit.admit(1, ctx)
    with pytest.raises(RateLimited, match="only 0 remain") as refused:
        limit.admit(1, ctx)
    assert refused.value.retry_after == pytest.approx(1.0)
    with pytest.raises(RateLimited) as refused:
        limit.admit(3, ctx)
    assert refused.value.retry_after == pytest.approx(3.0)


def test_tokens_refill_as_time_passes_and_never_beyond_capacity() -> None:
    limit, clock = bucket(capacity=10)
    ctx = context()
    limit.admit(10, ctx)
    clock.now += 4
    limit.admit(4, ctx)
    with pytest.raises(RateLimited):
        limit.admit(1, ctx)
    clock.now += 3600  # an hour refills far more than capacity: the bucket is just full
    limit.admit(10, ctx)
    with pytest.raises(RateLimited):
        limit.admit(1, ctx)


def test_a_clock_going_backwards_refills_nothing() -> None:
    limit, clock = bucket(capacity=5)
    ctx = context()
    limit.admit(5, ctx)
    clock.now -= 100
    with pytest.raises(RateLimited):
        limit.admit(1, ctx)


def test_clients_have_independent_buckets() -> None:
    limit, _ = bucket(capacity=3)
    store = MemoryStore()
    a, b = context("a", store), context("b", store)
    limit.admit(3, a)
    limit.admit(3, b)
    with pytest.raises(RateLimited):
        limit.admit(1, a)
    with pytest.raises(RateLimited):
        limit.admit(1, b)


def test_a_request_is_admitted_or_refused_whole_and_refusal_costs_nothing() -> None:
    limit, _ = bucket(capacity=10, refill_per_hour=0)
    ctx = context()
    limit.admit(6, ctx)
    with pytest.raises(RateLimited, match="5 queries but only 4 remain, and this quota is never"):
        limit.admit(5, ctx)
    # The refused request withdrew nothing: the four tokens are all still there.
    limit.admit(4, ctx)
    with pytest.raises(RateLimited):
        limit.admit(1, ctx)


def test_same_history_same_answers() -> None:
    def run() -> list[bool]:
        limit, clock = bucket(capacity=7, refill_per_hour=1800)
        ctx, outcomes = context(), []
        for n in [3, 3, 3, 2, 1, 4, 1]:
            clock.now += 1.5
            try:
                limit.admit(n, ctx)
                outcomes.append(True)
            except RateLimited:
                outcomes.append(False)
        return outcomes

    assert run() == run() == [True, True, False, True, True, False, True]


def test_a_batch_larger_than_capacity_can_never_pass() -> None:
    limit, clock = bucket(capacity=5)
    ctx = context()
    with pytest.raises(RateLimited, match="more than the 5 a client may ever send at once") as exc:
        limit.admit(6, ctx)
    assert exc.value.retry_after == float("inf")
    assert "t=" not in exc.value.headers["RateLimit"]
    clock.now += 10**6
    with pytest.raises(RateLimited, match="can never be admitted"):
        limit.admit(6, ctx)
    limit.admit(5, ctx)  # the refusals cost nothing


def test_headers_on_admitted_and_refused_requests() -> None:
    limit, clock = bucket(capacity=10, refill_per_hour=360, policy_name="per-key")  # 0.1 /s
    ctx = context()
    limit.admit(4, ctx)
    assert ctx.headers == {
        "RateLimit-Policy": '"per-key";q=10;w=100',
        "RateLimit": '"per-key";r=6;t=40',
    }
    clock.now += 5  # half a token refilled: r rounds down, t rounds up
    ctx = context(store=ctx.store)
    limit.admit(6, ctx)
    assert ctx.headers["RateLimit"] == '"per-key";r=0;t=95'
    with pytest.raises(RateLimited) as refused:
        limit.admit(2, context(store=ctx.store))
    assert refused.value.retry_after == pytest.approx(15.0)
    assert refused.value.headers == {
        "RateLimit-Policy": '"per-key";q=10;w=100',
        "RateLimit": '"per-key";r=0;t=15',
    }


def test_a_full_bucket_says_t0_and_no_refill_omits_w_and_t() -> None:
    limit, clock = bucket(capacity=4)
    ctx = context()
    limit.admit(1, ctx)
    clock.now += 60
    ctx = context(store=ctx.store)
    limit.admit(0, ctx)
    assert ctx.headers["RateLimit"] == '"default";r=4;t=0'
    assert ctx.headers["RateLimit-Policy"] == '"default";q=4;w=4'
    frozen, _ = bucket(capacity=4, refill_per_hour=0)
    ctx = context()
    frozen.admit(1, ctx)
    assert ctx.headers == {"RateLimit-Policy": '"default";q=4', "RateLimit": '"default";r=3'}


def test_defaults_advertise_1000_per_hour() -> None:
    ctx = context()
    TokenBucketRateLimit().admit(1, ctx)
    assert ctx.headers["RateLimit-Policy"] == '"default";q=1000;w=3600'
    assert ctx.headers["RateLimit"] == '"default";r=999;t=4'


def test_policy_names_are_quoted_as_structured_field_strings() -> None:
    limit, _ = bucket(policy_name='a "b" \\c')
    assert limit.policy_header() == '"a \\"b\\" \\\\c";q=10;w=10'


def test_two_buckets_list_both_policies_and_keep_separate_state() -> None:
    burst, clock = bucket(capacity=5, policy_name="burst")
    hourly = TokenBucketRateLimit(capacity=100, refill_per_hour=100, policy_name="hourly")
    hourly.clock = clock
    ctx = context()
    Pipeline([burst, hourly]).admit(2, ctx)
    assert ctx.headers["RateLimit-Policy"] == '"burst";q=5;w=5, "hourly";q=100;w=3600'
    assert ctx.headers["RateLimit"] == '"burst";r=3;t=2, "hourly";r=98;t=72'
    peek = ctx.store.take_tokens  # a zero-cost withdrawal reads a bucket
    assert peek("bucket:c:burst", 0, 5, 1, clock.now).remaining == 3
    assert peek("bucket:c:hourly", 0, 100, 100 / 3600, clock.now).remaining == 98


def test_the_default_policy_keeps_one_bucket_per_client_under_bucket_client() -> None:
    limit, _ = bucket(capacity=5)
    store = MemoryStore()
    limit.admit(2, context("alice", store))
    limit.admit(1, context("bob", store))
    assert store.take_tokens("bucket:alice", 0, 5, 1, 1_000.0).remaining == 3
    assert store.take_tokens("bucket:bob", 0, 5, 1, 1_000.0).remaining == 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"capacity": 0}, r"capacity must be an integer in \[1, inf\), got 0"),
        ({"capacity": 2.5}, r"capacity must be an integer in \[1, inf\)"),
        ({"capacity": True}, r"capacity must be an integer in \[1, inf\)"),
        ({"refill_per_hour": -1}, r"refill_per_hour must be a number in \[0, inf\), got -1"),
        ({"refill_per_hour": float("inf")}, r"refill_per_hour must be a number in \[0, inf\)"),
        ({"refill_per_hour": "10"}, r"refill_per_hour must be a number in \[0, inf\)"),
        ({"policy_name": ""}, "policy_name must be a non-empty string"),
        ({"policy_name": "naïve"}, "policy_name must be a non-empty string of printable ASCII"),
        ({"policy_name": 3}, "policy_name must be a non-empty string"),
    ],
)
def test_invalid_parameters_are_config_errors(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TokenBucketRateLimit(**params)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("capacity = 0", r"capacity must be an integer in \[1, inf\)"),
        ("capacity = 1.5", r"capacity must be an integer in \[1, inf\)"),
        ("refill_per_hour = -3.0", r"refill_per_hour must be a number in \[0, inf\)"),
        ('policy_name = ""', "policy_name must be a non-empty string"),
        ("clock = 3", "has no parameter clock"),
        ("burst = 3", "has no parameter burst"),
    ],
)
def test_bad_token_bucket_in_a_toml_file(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "d.toml"
    path.write_text(f'[[stages]]\ntype = "token_bucket"\n{line}\n')
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path)


def test_token_bucket_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        '[[stages]]\ntype = "token_bucket"\ncapacity = 50\nrefill_per_hour = 600\n'
        'policy_name = "api"\n[[stages]]\ntype = "normalize"\n'
    )
    pipeline = load_pipeline(path)
    assert pipeline.stage_names == ["token_bucket", "normalize"]
    stage = pipeline.stages[0]
    assert isinstance(stage, TokenBucketRateLimit)
    assert (stage.capacity, stage.refill_per_hour, stage.policy_name) == (50, 600.0, "api")
    assert stage.policy_header() == '"api";q=50;w=300'


def test_a_vanishingly_slow_refill_is_treated_as_none() -> None:
    limit, _ = bucket(capacity=2, refill_per_hour=1e-310)
    ctx = context()
    limit.admit(2, ctx)
    assert ctx.headers["RateLimit-Policy"] == '"default";q=2'
    with pytest.raises(RateLimited, match="never refilled"):
        limit.admit(1, context(store=ctx.store))
