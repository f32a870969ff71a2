"""Prediction-API protocols by name, and :func:`make_oracle`, the one way to connect to one."""

from typing import Any

from modeltheft.errors import ConfigError
from modeltheft.oracle.http import HttpOptions, HttpOracle, HttpOracleBase
from modeltheft.oracle.kserve import KServeV1Oracle
from modeltheft.oracle.oip import OipV2Oracle
from modeltheft.registry import Registry
from modeltheft.tasks.base import Task

PROTOCOLS: Registry[HttpOracleBase] = Registry("protocol")
"""``modeltheft`` (ours), ``oip-v2`` (KServe v2, MLServer, Triton), ``kserve-v1``."""
for _oracle in (HttpOracle, OipV2Oracle, KServeV1Oracle):
    PROTOCOLS.register(_oracle)

_OPTIONS = set(HttpOptions.__annotations__) - {"task"}
_EXTRA = {"oip-v2": {"input_name", "outputs"}}


def make_oracle(
    protocol: str,
    url: str,
    *,
    budget: int,
    model_name: str | None = None,
    task: Task | None = None,
    datatype: str | None = None,
    probabilities: bool = False,
    **options: Any,
) -> HttpOracleBase:
    """An HTTP oracle for ``protocol``: ``modeltheft`` (needs ``api_key``), ``oip-v2`` or
    ``kserve-v1`` (both need ``model_name``; ``api_key`` optional).

    ``task`` (e.g. from ``--task``) gives bounds and feature names and must agree with what
    the target says of its width; ``kserve-v1`` needs it (the protocol does not describe a
    model). ``datatype`` is OIP's input tensor type (default: the model metadata's, else
    FP64). ``probabilities``: the attack needs them, so OIP asks for a probability output even
    when the metadata lists none (falling back to labels if the server refuses); ``outputs``
    (OIP only) names the outputs to ask for instead. ``options``: ``api_key``, ``log``,
    ``timeout``, ``retries``, ``on_rate_limit``, ``max_waits``, ``client``
    (see :class:`~modeltheft.oracle.http.HttpOracleBase`).
    The target is not contacted until :meth:`~modeltheft.oracle.base.Oracle.discover` or the
    first query.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    unknown = sorted(set(options) - _OPTIONS - _EXTRA.get(protocol, set()))
    if unknown:
        allowed = sorted(_OPTIONS | _EXTRA.get(protocol, set()))
        raise ConfigError(
            f"protocol {protocol!r} has no option {', '.join(unknown)} "
            f"(it takes: {', '.join(allowed)})"
        )
    params: dict[str, Any] = {"url": url, "budget": budget, "task": task, **options}
    if protocol == "modeltheft":
        if not options.get("api_key"):
            raise ConfigError("protocol 'modeltheft' needs an API key")
    elif not model_name:
        raise ConfigError(f"protocol {protocol!r} needs a model name")
    else:
        params["model_name"] = model_name
    if datatype is not None:
        if protocol != "oip-v2":
            raise ConfigError(f"datatype is an option of protocol 'oip-v2', not {protocol!r}")
        params["datatype"] = datatype
    if protocol == "oip-v2":
        params["probabilities"] = probabilities
    return PROTOCOLS.build(protocol, params)
