"""Domain errors. The CLI turns them into one-line messages, the service into HTTP codes."""


class ModelTheftError(Exception):
    """Base class of every error modeltheft raises on purpose."""


class ConfigError(ModelTheftError):
    """A setting, option or configuration file is invalid."""


class ModelIntegrityError(ModelTheftError):
    """A model file is missing, altered, or holds types we do not trust."""


class AuthError(ModelTheftError):
    """A request carries no API key or an unknown one."""


class InputError(ModelTheftError):
    """A request body or query input is malformed."""


class PayloadTooLarge(InputError):
    """A request body or batch is larger than the service accepts."""


class RateLimited(ModelTheftError):
    """A client is refused by a rate limit; retry after ``retry_after`` seconds."""

    def __init__(
        self, message: str, retry_after: float = 1.0, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = dict(headers or {})


class Blocked(ModelTheftError):
    """A client was blocked by a detector; its requests are refused (HTTP 403)."""


class BudgetExhausted(ModelTheftError):
    """An oracle was asked for more queries than its budget allows."""


class OracleError(ModelTheftError):
    """A prediction API answered with something we cannot use."""


class AttackFailed(ModelTheftError):
    """An attack could not produce a stolen model (for example, too few answers)."""


class StateUnavailable(ModelTheftError):
    """The state store cannot be used now (database locked, Redis unreachable): HTTP 503.

    Nothing is answered without its state, so the request is refused; retry after
    ``retry_after`` seconds.
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreDown(StateUnavailable):
    """Refused at once: the state store is known to be down (logged once, when it went down)."""


class UpstreamError(ModelTheftError):
    """A gateway's upstream model server failed: unreachable or answered garbage (HTTP 502)."""


class UpstreamTimeout(UpstreamError):
    """A gateway's upstream model server did not answer in time (HTTP 504)."""
