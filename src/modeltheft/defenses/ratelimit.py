"""Admission stages that limit how many queries a client gets answered."""

from modeltheft.defenses.base import AdmissionStage, DefenseContext
from modeltheft.errors import ConfigError, RateLimited


class ProbabilisticRateLimit(AdmissionStage):
    """The OWASP lab's limiter: past ``free_queries`` queries, refuse each with probability p.

    Every row counts as a query, answered or not (as in the lab). A request is answered whole
    or refused whole: if any of its rows is refused, the client gets 429 for the request.
    """

    name = "probabilistic_rate_limit"
    paper = "OWASP ML05:2023 lab (query-pattern rate limiting)"

    def __init__(
        self, free_queries: int = 150, refuse_probability: float = 0.8, retry_after: float = 1.0
    ) -> None:
        if not isinstance(free_queries, int) or isinstance(free_queries, bool) or free_queries < 0:
            raise ConfigError(f"free_queries must be an integer >= 0, got {free_queries!r}")
        if not isinstance(refuse_probability, int | float) or not 0 <= refuse_probability <= 1:
            raise ConfigError(f"refuse_probability must be in [0, 1], got {refuse_probability!r}")
        if not isinstance(retry_after, int | float) or retry_after < 0:
            raise ConfigError(f"retry_after must be >= 0 seconds, got {retry_after!r}")
        self.free_queries = free_queries
        self.refuse_probability = float(refuse_probability)
        self.retry_after = float(retry_after)

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
                retry_after=self.retry_after,
            )
