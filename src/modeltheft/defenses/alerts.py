"""Detections: log them, count them, and move the client to a stricter policy if asked.

A client's *status* only ever rises: ``NORMAL`` → ``STRICT`` (later answers are treated as
suspicious, misinformed and watermarked if those stages run: with adaptive misinformation,
the new rows that look synthetic by its looser ``strict_fpr`` gate; rows the client sent
while ``NORMAL`` keep their answers) → ``BLOCKED`` (403).
"""

import json
import logging
import time
from typing import Literal

from modeltheft.defenses.base import Answers, DefenseContext, served_key
from modeltheft.state.base import StateStore

log = logging.getLogger("modeltheft.alerts")

NORMAL, STRICT, BLOCKED = 0, 1, 2
Action = Literal["log", "strict", "block"]
ACTIONS: dict[str, int] = {"log": NORMAL, "strict": STRICT, "block": BLOCKED}


def status_key(client_id: str) -> str:
    """Store key of a client's status."""
    return f"status:{client_id}"


def client_status(store: StateStore, client_id: str) -> int:
    """``NORMAL``, ``STRICT`` or ``BLOCKED``."""
    return store.get(status_key(client_id))


def raise_alert(ctx: DefenseContext, detector: str, reason: str, action: str) -> bool:
    """Record a detection of ``ctx.client_id``; True if it is this detector's first for the client.

    The alert is logged (client name only, never a key), counted under ``alerts:<detector>``,
    kept in the ``alerts`` list, and the client's status is raised as ``action`` says.
    """
    # The policy first: whatever happens next, the client stays under it.
    ctx.store.raise_to(status_key(ctx.client_id), ACTIONS[action])
    first = ctx.store.incr(f"alerted:{detector}:{ctx.client_id}") == 1
    if first:
        ctx.store.incr(f"alerts:{detector}")
        record = {"time": time.time(), "client": ctx.client_id, "detector": detector}
        record |= {"reason": reason, "action": action}
        record["after_queries"] = ctx.store.get(served_key(ctx.client_id))
        ctx.store.append("alerts", [json.dumps(record).encode()])
        ctx.store.add_member("alerted_clients", ctx.client_id)
        log.warning(
            "extraction alert: client=%s detector=%s action=%s: %s",
            ctx.client_id,
            detector,
            action,
            reason,
        )
    return first


def flagged_clients(store: StateStore) -> set[str]:
    """Clients that any detector has alerted on."""
    return store.members("alerted_clients")


def alerts(store: StateStore) -> list[dict[str, object]]:
    """Every alert recorded so far, oldest first."""
    return [json.loads(item) for item in store.items("alerts")]


def escalate(answers: Answers, ctx: DefenseContext, action: str) -> Answers:
    """After an alert that puts ``ctx``'s client under the strict policy, treat this batch as
    the strict policy treats later ones (every detector calls this after raising its alert).

    Rows the client sent earlier under the normal policy keep their answers; of the others,
    a pipeline with adaptive misinformation misinforms those beyond its looser ``strict_fpr``
    gate, any other pipeline marks them all suspicious (:meth:`Answers.escalated`).
    """
    if ACTIONS[action] > 0:
        return answers.escalated(ctx)
    return answers


SERVICE = "*service*"
"""Pseudo-client of service-wide alerts in the ``alerts`` list (no API key should be named so)."""


def raise_service_alert(
    store: StateStore, detector: str, reason: str, action: str, episode: int, **facts: object
) -> bool:
    """Record a service-wide detection (one per detector and ``episode``); True if new.

    Same channels as :func:`raise_alert`: logged, counted under ``alerts:<detector>``, kept in
    the ``alerts`` list with ``client`` = :data:`SERVICE`. No client's status changes here.
    """
    first = store.incr(f"alerted:{detector}:{SERVICE}:{episode}") == 1
    if first:
        store.incr(f"alerts:{detector}")
        record = {"time": time.time(), "client": SERVICE, "detector": detector}
        record |= {"reason": reason, "action": action, "episode": episode, **facts}
        store.append("alerts", [json.dumps(record).encode()])
        log.warning(
            "service-wide extraction alert: detector=%s action=%s: %s", detector, action, reason
        )
    return first
