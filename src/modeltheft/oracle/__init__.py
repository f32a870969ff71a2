"""Oracles: what an attack queries. They own the budget, the query log and the task."""

from modeltheft.oracle.answers import OracleAnswers
from modeltheft.oracle.base import Oracle
from modeltheft.oracle.classes import ClassBook
from modeltheft.oracle.http import HttpOptions, HttpOracle, HttpOracleBase
from modeltheft.oracle.kserve import KServeV1Oracle
from modeltheft.oracle.local import LocalOracle
from modeltheft.oracle.log import QueryLog
from modeltheft.oracle.oip import OipV2Oracle
from modeltheft.oracle.protocols import PROTOCOLS, make_oracle

__all__ = [
    "PROTOCOLS",
    "ClassBook",
    "HttpOptions",
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
