"""Shared fixture of the oracle tests: a stand-in server, reset and configured per test."""

from collections.abc import Callable
from typing import Any

import pytest

from modeltheft.service.runner import BackgroundServer
from tests.oracle.standins import reset


@pytest.fixture
def serve(servers: dict[str, BackgroundServer]) -> Callable[..., BackgroundServer]:
    """``serve(protocol, **config)``: that protocol's server (from the module's ``servers``
    fixture), reset and configured."""

    def configure(protocol: str, **config: Any) -> BackgroundServer:
        server = servers[protocol]
        reset(server.app, **config)
        return server

    return configure
