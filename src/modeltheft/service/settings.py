"""Server configuration, built explicitly (nothing is read at import time)."""

import re
from dataclasses import dataclass
from math import inf
from pathlib import Path

from modeltheft.errors import ConfigError
from modeltheft.service.auth import KeyRing, MetricsKey
from modeltheft.service.timeouts import DEFAULT_MAX_HEAD_BYTES, DEFAULT_TIMEOUT
from modeltheft.service.upstream import UpstreamConfig
from modeltheft.state.audit import DEFAULT_RETENTION
from modeltheft.state.base import IDLE_AFTER

MAX_BATCH = 256


@dataclass(frozen=True)
class Settings:
    """Everything ``create_app`` needs.

    ``model_path`` None means: train the default victim on the fly (on ``task``, digits by
    default). ``task`` is a built-in task name or a TOML task file; None: the model's own
    (its metadata, else its width and classes). ``defense`` is a preset
    name or a TOML path. ``seed`` makes the defenses' randomness reproducible (tests, demo);
    leave it None in production. ``state`` is the URL of the store that keeps the stateful
    defenses' per-client state (see :func:`modeltheft.state.open_store`): ``memory://`` for
    one process, ``sqlite:///path.db`` for the worker processes of one machine, ``redis://…``
    for replicas.
    """

    keys: KeyRing
    model_path: Path | None = None
    task: str | None = None
    defense: str = "none"
    max_batch: int = MAX_BATCH
    max_body_bytes: int = 2_000_000
    max_header_bytes: int = DEFAULT_MAX_HEAD_BYTES
    """A request line and headers longer than this get 431 (16 KiB)."""
    seed: int | None = None
    state: str = "memory://"
    inference: str = "auto"
    """``auto``: onnxruntime when the model converts and agrees with scikit-learn; ``sklearn``."""
    audit_retention: float = DEFAULT_RETENTION
    """Seconds the audit log of queries is kept in the state store (7 days); 0: no audit."""
    idle_after: float = IDLE_AFTER
    """Seconds without a request after which a client's detector state is evicted from the
    store and the workers' memory (its status, alerts and quota stay); > 0 (7 days)."""
    request_timeout: float = DEFAULT_TIMEOUT
    """Seconds a client has to send a request head, and then its body; else 408 and close."""
    access_log: bool = True
    """One ``modeltheft.access`` log record per request (metrics are kept either way)."""
    metrics_key: MetricsKey | None = None
    """The credential ``GET /metrics`` asks for (``MODELTHEFT_METRICS_KEY``); None: 404."""
    model_name: str | None = None
    """The model's name on the OIP v2 and KServe v1 routes; None: the model file's stem."""
    upstream: UpstreamConfig | None = None
    """Gateway mode: guard the model this server serves instead of a local one."""

    def __post_init__(self) -> None:
        if self.task is not None and (not isinstance(self.task, str) or not self.task.strip()):
            raise ConfigError(f"task must be a task name or a .toml file, got {self.task!r}")
        if self.model_name is not None and (
            not isinstance(self.model_name, str)
            or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", self.model_name)
        ):
            raise ConfigError(
                f"model name must be 1-128 letters, digits, '_', '.' or '-' (not first), "
                f"got {self.model_name!r}"
            )
        if self.upstream is not None and self.model_path is not None:
            raise ConfigError("--model and --upstream exclude each other: guard one model")
        if self.inference not in ("auto", "sklearn"):
            raise ConfigError(f"inference must be auto or sklearn, got {self.inference!r}")
        if len(self.keys) == 0:
            raise ConfigError(
                "no API keys configured: set MODELTHEFT_API_KEYS=name:key[,name:key] "
                "or pass --keys-file"
            )
        if not (isinstance(self.request_timeout, int | float) and 0 < self.request_timeout < inf):
            raise ConfigError(f"request_timeout must be > 0 seconds, got {self.request_timeout!r}")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if not isinstance(self.max_header_bytes, int) or self.max_header_bytes < 1024:
            raise ConfigError(f"max_header_bytes must be >= 1024, got {self.max_header_bytes!r}")
        if not (isinstance(self.audit_retention, int | float) and 0 <= self.audit_retention < inf):
            raise ConfigError(
                f"audit_retention must be >= 0 seconds (0: no audit), got {self.audit_retention!r}"
            )
        if not (isinstance(self.idle_after, int | float) and 0 < self.idle_after < inf):
            raise ConfigError(f"idle_after must be > 0 seconds, got {self.idle_after!r}")
        if not isinstance(self.state, str) or not self.state.strip():
            raise ConfigError("state must be a store URL such as memory:// or sqlite:///x.db")
