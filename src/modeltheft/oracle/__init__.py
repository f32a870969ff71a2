"""Oracles: what an attack queries. They own the budget and the query log."""

from typing import Unpack

from modeltheft.errors import ConfigError
from modeltheft.oracle.base import Oracle, OracleAnswers
from modeltheft.oracle.http import HttpOptions, HttpOracle, HttpOracleBase
from modeltheft.oracle.kserve import KServeV1Oracle
from modeltheft.oracle.local import LocalOracle
from modeltheft.oracle.log import QueryLog
from modeltheft.oracle.oip import OipV2Oracle

PROTOCOLS = ("modeltheft", "oip-v2", "kserve-v1")


def make_oracle(
    protocol: str,
    url: str,
    *,
    budget: int,
    model_name: str | None = None,
    datatype: str = "FP64",
    **options: Unpack[HttpOptions],
) -> HttpOracleBase:
    """An HTTP oracle for ``protocol``: ``modeltheft`` (needs ``api_key``), ``oip-v2`` or
    ``kserve-v1`` (both need ``model_name``; ``api_key`` optional). ``datatype`` is OIP's."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "modeltheft":
        api_key = options.pop("api_key", None)
        if not api_key:
            raise ConfigError("protocol 'modeltheft' needs an API key")
        return HttpOracle(url, api_key, budget, **options)
    if not model_name:
        raise ConfigError(f"protocol {protocol!r} needs a model name")
    if protocol == "oip-v2":
        return OipV2Oracle(url, model_name, budget, datatype=datatype, **options)
    return KServeV1Oracle(url, model_name, budget, **options)


__all__ = [
    "PROTOCOLS",
    "HttpOracle",
    "HttpOracleBase",
    "KServeV1Oracle",
    "LocalOracle",
    "OipV2Oracle",
    "Oracle",
    "OracleAnswers",
    "QueryLog",
    "make_oracle",
]
