"""Admission stages that limit how many queries a client gets answered."""

import math
import time
from collections.abc import Callable
from typing import ClassVar

from modeltheft.defenses.base import STAGES, AdmissionStage, DefenseContext
from modeltheft.errors import RateLimited
from modeltheft.registry import Interval, Satisfies


@STAGES.register
class ProbabilisticRateLimit(AdmissionStage):
    """The OWASP lab's limiter: past ``free_queries`` queries, refuse each with probability p.

    Every row counts as a query, answered or not (as in the lab). A request is answered whole
    or refused whole: if any of its rows is refused, the client gets 429 for the request.
    """

    name = "probabilistic_rate_limit"
    honest_cost = "high: after 150 queries, 80% of every client's queries are refused"
    paper = "OWASP ML05:2023 lab (query-pattern rate limiting)"

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "free_queries": [Interval(int, 0, None)],
        "refuse_probability": [Interval(float, 0, 1)],
        "retry_after": [Interval(float, 0, float("inf"), closed="left")],
    }

    def __init__(
        self, free_queries: int = 150, refuse_probability: float = 0.8, retry_after: float = 1.0
    ) -> None:
        self.free_queries = free_queries
        self.refuse_probability = refuse_probability
        self.retry_after = retry_after
        self.validate_params()

    def admit(self, n_rows: int, ctx: DefenseContext) -> None:
        total = ctx.store.incr(f"queries:{ctx.client_id}", n_rows)
        first = total - n_rows + 1
        over = sum(1 for count in range(first, total + 1) if count > self.free_queries)
        if over == 0:
            return
        refused = int((ctx.rng.random(over) < self.refuse_probability).sum())
        if refused:
            raise RateLimited(
                f"rate limited: {refused} of the {n_rows} queries in this request were refused "
                f"(this client has sent {total} queries)",
                retry_after=float(self.retry_after),
            )


def _sf_string(text: str) -> str:
    """``text`` as a Structured Field String (RFC 8941 §3.3.3): quoted, ``\\`` and ``"`` escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ceil_seconds(seconds: float) -> int:
    """Whole seconds, rounded up, ignoring float noise (5.0000000001 s is 5 s)."""
    return max(0, math.ceil(seconds - 1e-9))


def _floor_tokens(tokens: float) -> int:
    """Whole tokens, rounded down, ignoring float noise (4.9999999999 tokens are 5)."""
    return max(0, math.floor(tokens + 1e-9))


def _printable_ascii(text: object) -> bool:
    return isinstance(text, str) and bool(text) and all(" " <= char <= "~" for char in text)


@STAGES.register
class TokenBucketRateLimit(AdmissionStage):
    """A per-client token bucket: bursts of up to ``capacity`` queries, ``refill_per_hour`` after.

    Each client (API key) has its own bucket, stored under ``bucket:<client_id>`` (under
    ``bucket:<client_id>:<policy_name>`` for a policy not named "default", so that several
    buckets, e.g. a burst limit and an hourly one, can be stacked in one pipeline); it starts
    full, holds at most ``capacity`` tokens and refills continuously at ``refill_per_hour``
    tokens per hour. Every row of a request costs one token, and a request is admitted whole
    (all its tokens withdrawn at once, atomically in every state store) or refused whole with
    429 (nothing withdrawn). No randomness: the same history always gets the same answers. A
    batch of more than ``capacity`` rows can never pass and is refused with a message saying so.

    The stage advertises its state with the ``RateLimit-Policy`` and ``RateLimit`` fields of
    draft-ietf-httpapi-ratelimit-headers-10 (same syntax in -08 and -09), on admitted and refused
    requests alike. One quota unit is one queried row (the draft's default unit, "requests",
    is left implicit). The token bucket maps onto the draft's quota policy as follows:

    - ``RateLimit-Policy: "<policy_name>";q=<capacity>;w=<window>`` where the window is the time
      an empty bucket takes to refill completely, ``ceil(capacity / refill rate)`` seconds: the
      sustained rate is ``q`` queries per ``w`` seconds (plus one burst of ``q`` from a full
      bucket). Without refill the
      bucket is a one-off quota and ``w`` is omitted (the draft requires ``w`` > 0 if present).
    - ``RateLimit: "<policy_name>";r=<remaining>;t=<seconds>`` where ``r`` is the whole number of
      tokens left and ``t`` is, on an admitted request, the time until the bucket is full again
      (``ceil``; 0 when full) and, on a refused one, the time until the request's tokens are
      available (the ``Retry-After`` the service adds, which per the draft should not be
      earlier than ``t``). ``t`` is omitted when that time never comes (no refill, or a
      batch larger than ``capacity``).

    ``clock`` (seconds, default :func:`time.time`) is an attribute, not a parameter: tests and
    benchmarks replace it with a fake clock; configuration files cannot.
    """

    name = "token_bucket"
    paper = "Token bucket (Turner, IEEE Commun. Mag. 1986), policing as in RFC 2697"
    honest_cost = "none below `capacity` rows per burst and `refill_per_hour` rows per hour"

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "capacity": [Interval(int, 1, None)],
        "refill_per_hour": [Interval(float, 0, float("inf"), closed="left")],
        "policy_name": [Satisfies(_printable_ascii, "a non-empty string of printable ASCII")],
    }

    clock: Callable[[], float]

    def __init__(
        self,
        capacity: int = 1000,
        refill_per_hour: float = 1000.0,
        policy_name: str = "default",
    ) -> None:
        self.capacity = capacity
        self.refill_per_hour = refill_per_hour
        self.policy_name = policy_name
        self.validate_params()
        self.clock = time.time

    @property
    def refill_per_second(self) -> float:
        """Tokens added to a bucket per second."""
        return self.refill_per_hour / 3600.0

    def key(self, client_id: str) -> str:
        """The state-store key of ``client_id``'s bucket under this policy."""
        if self.policy_name == "default":
            return f"bucket:{client_id}"
        return f"bucket:{client_id}:{self.policy_name}"

    def policy_header(self) -> str:
        """The ``RateLimit-Policy`` field value (the same on every response)."""
        value = f"{_sf_string(self.policy_name)};q={self.capacity}"
        window = self.capacity / self.refill_per_second if self.refill_per_second > 0 else None
        if window is not None and math.isfinite(window):
            value += f";w={max(1, _ceil_seconds(window))}"
        return value

    def limit_header(self, remaining: float, seconds: float | None) -> str:
        """The ``RateLimit`` field value: ``remaining`` tokens, ``t`` after ``seconds`` if known."""
        value = f"{_sf_string(self.policy_name)};r={_floor_tokens(remaining)}"
        if seconds is not None and math.isfinite(seconds):
            value += f";t={_ceil_seconds(seconds)}"
        return value

    def _headers(self, ctx: DefenseContext, remaining: float, seconds: float | None) -> None:
        """Add this policy to ``ctx.headers``; other policies' items stay in the same lists."""
        for field_name, item in (
            ("RateLimit-Policy", self.policy_header()),
            ("RateLimit", self.limit_header(remaining, seconds)),
        ):
            earlier = ctx.headers.get(field_name)
            ctx.headers[field_name] = f"{earlier}, {item}" if earlier else item

    def admit(self, n_rows: int, ctx: DefenseContext) -> None:
        rate = self.refill_per_second
        state = ctx.store.take_tokens(
            self.key(ctx.client_id), float(n_rows), float(self.capacity), rate, self.clock()
        )
        if state.allowed:
            until_full = (self.capacity - state.remaining) / rate if rate > 0 else None
            self._headers(ctx, state.remaining, until_full)
            return
        self._headers(ctx, state.remaining, state.retry_after)
        if n_rows > self.capacity:
            message = (
                f"rate limited: this request has {n_rows} queries, more than the "
                f"{self.capacity} a client may ever send at once, so it can never be admitted; "
                f"send at most {self.capacity} rows per request"
            )
        elif not math.isfinite(state.retry_after):  # no refill (or too slow to be counted)
            message = (
                f"rate limited: this request has {n_rows} queries but only "
                f"{_floor_tokens(state.remaining)} remain, and this quota is never refilled"
            )
        else:
            message = (
                f"rate limited: this request has {n_rows} queries but only "
                f"{_floor_tokens(state.remaining)} remain; {self.refill_per_hour:g} are added per "
                f"hour, enough for this request in {_ceil_seconds(state.retry_after)} s"
            )
        raise RateLimited(message, retry_after=state.retry_after, headers=dict(ctx.headers))
