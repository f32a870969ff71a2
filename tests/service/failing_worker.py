"""An app factory for ``run_workers`` tests: the worker refuses to start.

It first holds the GIL for a while (so uvicorn's health-ping thread cannot answer a ping sent
meanwhile), then exits with the start-up failure code without answering: the supervisor's
pending ping must not wait for its whole timeout.
"""

import logging
import os
import sys
import time

from modeltheft.service.runner import WORKER_START_FAILURE


def app() -> None:
    """Log one line, keep the pong thread from answering for ~1.5 s, exit 3."""
    logging.getLogger("modeltheft.service").error("worker %d cannot start: test", os.getpid())
    sys.setswitchinterval(30)  # the main thread keeps the GIL while it computes
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        pass
    os._exit(WORKER_START_FAILURE)
