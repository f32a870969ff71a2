"""Sweep runs on Ray: a local instance started for the sweep, or an existing cluster.

Optional extra (``pip install 'modeltheft[ray]'``). Each run is :func:`run_task` in a Ray
worker (one CPU per run), so the records are the same dicts the local engine produces.

A local instance is started only when Ray is not running in this process yet, and is shut
down after the sweep; it listens on the loopback interface only. On a cluster
(``address``), every node needs ``modeltheft`` installed in the same version; ``workers``
then caps how many runs are in flight at once.
"""

import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from modeltheft.errors import ConfigError
from modeltheft.experiments.engines import OnResult
from modeltheft.experiments.spec import Task

MISSING = "the Ray engine needs the optional extra: pip install 'modeltheft[ray]'"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to 0, Ray's node address is 127.0.0.1 and its servers bind to loopback only.

``ray.init(_node_ip_address="127.0.0.1")`` does not do that: Ray resolves a loopback address
to the machine's routable one, and its servers then listen on every interface.
"""
OBJECT_STORE_BYTES = 256 * 1024**2
"""Records are a few kB; Ray's default (30% of RAM) would reserve far more shared memory."""


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Start Ray's processes in non-cluster mode: bound to 127.0.0.1, not to all interfaces."""
    from ray._private import ray_constants

    previous_env = os.environ.get(LOOPBACK_ENV)
    previous_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[LOOPBACK_ENV] = "0"  # for Ray's own Python processes (agents, workers)
    if previous_flag is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False  # for this process, if Ray was imported already
    try:
        yield
    finally:
        if previous_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = previous_env
        if previous_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = previous_flag


class RayEngine:
    """Runs tasks as Ray tasks, ``2 × CPUs`` in flight, handing records over as they finish."""

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(MISSING)
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError(f"address must be a Ray cluster address, got {address!r}")
        self.workers = workers
        self.address = address
        self.node_ip: str | None = None
        """The Ray node address of the last run (``127.0.0.1`` for a local instance)."""

    def describe(self) -> str:
        if self.address is not None:
            cap = f", at most {self.workers} run(s) at once" if self.workers else ""
            return f"the Ray cluster at {self.address}{cap}"
        return f"Ray ({self.workers or os.cpu_count() or 1} CPU(s) on this machine)"

    def _start(self) -> bool:
        """Connect to or start Ray; True if this call started it (and must shut it down)."""
        import ray

        if ray.is_initialized():
            return False
        quiet: dict[str, Any] = {
            "log_to_driver": False,  # a run's output stays in its record and Ray's log files
            "logging_level": logging.ERROR,
            "include_dashboard": False,
        }
        if self.address is not None:
            try:
                ray.init(address=self.address, **quiet)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                message = " ".join(str(exc).split())
                raise ConfigError(f"cannot connect to Ray at {self.address}: {message}") from None
            return True
        with _loopback_only():
            ray.init(
                num_cpus=self.workers or os.cpu_count() or 1,
                num_gpus=0,
                object_store_memory=OBJECT_STORE_BYTES,
                **quiet,
            )
        return True

    def _in_flight(self) -> int:
        import ray

        if self.address is not None and self.workers is not None:
            return self.workers
        cpus = int(ray.cluster_resources().get("CPU", 0)) or self.workers or 1
        return 2 * cpus

    def run(self, tasks: Sequence[Task], on_result: OnResult) -> None:
        if not tasks:
            return
        import ray

        from modeltheft.experiments.run import run_task

        started = self._start()
        pending: list[Any] = []
        try:
            self.node_ip = ray.util.get_node_ip_address()
            remote = ray.remote(num_cpus=1)(run_task)
            queue = list(tasks)
            queue.reverse()  # pop() from the end keeps the spec's order
            limit = self._in_flight()
            while queue or pending:
                while queue and len(pending) < limit:
                    pending.append(remote.remote(queue.pop()))
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    on_result(ray.get(ref))
        except BaseException:
            for ref in pending:  # interrupted or failed: stop the runs still queued or running
                with suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()
