"""Oracles: what an attack queries. They own the budget and the query log."""

from modeltheft.oracle.base import Oracle, OracleAnswers
from modeltheft.oracle.http import HttpOracle
from modeltheft.oracle.local import LocalOracle
from modeltheft.oracle.log import QueryLog

__all__ = ["HttpOracle", "LocalOracle", "Oracle", "OracleAnswers", "QueryLog"]
