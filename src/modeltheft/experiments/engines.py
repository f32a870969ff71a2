"""Where sweep runs execute: local processes (default) or a Ray cluster (optional extra)."""

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, Protocol

from modeltheft.errors import ConfigError
from modeltheft.experiments.run import run_task
from modeltheft.experiments.spec import Task

OnResult = Callable[[dict[str, Any]], None]


class Engine(Protocol):
    """Runs tasks and hands each record to ``on_result`` as soon as it is done."""

    def describe(self) -> str:
        """One line for the console."""
        ...

    def run(self, tasks: Sequence[Task], on_result: OnResult) -> None:
        """Run every task."""
        ...


class LocalEngine:
    """A pool of ``workers`` fresh processes (spawned: no state inherited from the parent)."""

    def __init__(self, workers: int | None = None) -> None:
        workers = (os.cpu_count() or 1) if workers is None else workers
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers

    def describe(self) -> str:
        return f"{self.workers} local process(es)"

    def run(self, tasks: Sequence[Task], on_result: OnResult) -> None:
        if not tasks:
            return
        with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn")) as pool:
            pending: set[Future[dict[str, Any]]] = {pool.submit(run_task, t) for t in tasks}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        on_result(future.result())
            except BaseException:
                for future in pending:
                    future.cancel()
                raise


def make_engine(name: str, workers: int | None = None, address: str | None = None) -> Engine:
    """``local`` or ``ray`` (``address`` only for Ray: an existing cluster)."""
    if name == "local":
        if address is not None:
            raise ConfigError("--address is for --engine ray")
        return LocalEngine(workers)
    if name == "ray":
        from modeltheft.experiments.ray_engine import RayEngine

        return RayEngine(workers=workers, address=address)
    raise ConfigError(f"unknown engine {name!r}; choose local or ray")
