"""Read a service's ``/metrics`` around each query to learn which answers were altered.

``modeltheft_answers_altered_total`` counts answered labels that differ from the model's own;
if ``/metrics`` is open and the thief reads it just before and after a request, the
difference is the number of faked answers in that request (other clients' traffic blurs it).
When ``/metrics`` answers 401, 403 or 404 the reader says ``"refused"`` and reads no more.
"""

from dataclasses import dataclass
from typing import ClassVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modeltheft.attacks.adaptive.twins import PAPER

ALTERED = "modeltheft_answers_altered"
ALERTS = "modeltheft_extraction_alerts"
FLAGGED = "modeltheft_flagged_clients"
REFUSED_STATUSES = (401, 403, 404)


@dataclass(frozen=True)
class MetricsSnapshot:
    """What ``/metrics`` said at one moment."""

    altered: float
    """Total answers altered so far (every client)."""
    alerts: dict[str, float]
    """Extraction alerts by detector."""
    flagged_clients: float


def parse(text: str) -> MetricsSnapshot:
    """The counters a thief cares about, from Prometheus text exposition."""
    altered, flagged, alerts = 0.0, 0.0, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == ALTERED and sample.name.endswith("_total"):
                altered += sample.value
            elif family.name == ALERTS and sample.name.endswith("_total"):
                detector = sample.labels.get("detector", "")
                alerts[detector] = alerts.get(detector, 0.0) + sample.value
            elif family.name == FLAGGED:
                flagged += sample.value
    return MetricsSnapshot(altered, alerts, flagged)


class MetricsReader:
    """``GET {url}/metrics``: ``status`` is ``"unread"``, ``"ok"`` or ``"refused"``.

    ``client`` may be any ``httpx.Client`` (a FastAPI ``TestClient`` too); ``token`` is sent
    as a bearer credential when given (a thief's own API key, say).
    """

    paper: ClassVar[str] = PAPER

    def __init__(
        self, url: str, client: httpx.Client | None = None, token: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.client = client or httpx.Client(timeout=10.0)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.status = "unread"
        self.reads = 0

    def read(self) -> MetricsSnapshot | None:
        """The current counters, or None once ``/metrics`` refused the thief."""
        if self.status == "refused":
            return None
        response = self.client.get(f"{self.url}/metrics", headers=self.headers)
        if response.status_code in REFUSED_STATUSES:
            self.status = "refused"
            return None
        response.raise_for_status()
        self.status = "ok"
        self.reads += 1
        return parse(response.text)

    @staticmethod
    def altered_between(
        before: MetricsSnapshot | None, after: MetricsSnapshot | None
    ) -> int | None:
        """Answers altered between two reads (None if either read was refused)."""
        if before is None or after is None:
            return None
        return round(after.altered - before.altered)
