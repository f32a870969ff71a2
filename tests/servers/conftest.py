"""Fixtures of the real-server tests: a real MLServer serving the session's digits victim."""

from collections.abc import Iterator

import pytest

from modeltheft.victim import LoadedVictim
from tests.servers.real import MLServer, mlserver


@pytest.fixture(scope="session")
def digits_mlserver(
    tmp_path_factory: pytest.TempPathFactory, victim: LoadedVictim
) -> Iterator[MLServer]:
    """MLServer 1.7.1 on loopback serving the victim twice: ``digits`` (minimal config: labels
    unless asked) and ``digits-proba`` (``predict_proba`` listed in its metadata). More models
    with :meth:`MLServer.add`. Started once per test process, stopped at its end."""
    models = {"digits": (victim.model, False), "digits-proba": (victim.model, True)}
    with mlserver(tmp_path_factory.mktemp("mlserver"), models) as server:
        print(f"MLServer ready after {server.startup_seconds:.1f} s")
        yield server
