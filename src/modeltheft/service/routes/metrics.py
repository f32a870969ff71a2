"""``GET /metrics``: alert counters read from the shared state store, and request metrics.

Reading the alerts from the store (not from per-process counters) gives every worker and
replica the same totals. The request metrics (:mod:`modeltheft.service.observability`) add
up the workers of one ``serve`` command.
"""

from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from modeltheft.defenses.alerts import flagged_clients
from modeltheft.defenses.detection import OodRateMonitor, Prada
from modeltheft.defenses.guarded import GuardedModel
from modeltheft.defenses.service_monitor import ServiceMonitor
from modeltheft.service.deps import Guarded

router = APIRouter()
DETECTORS = (OodRateMonitor.name, Prada.name)
DETECTORS += (ServiceMonitor.name,)  # service-wide alerts: one per watch


class StoreCollector:
    """Collects the alert counters of one guarded model at scrape time."""

    def __init__(self, guarded: GuardedModel) -> None:
        self.guarded = guarded

    def collect(self) -> Iterator[Metric]:
        """Alerts by detector, and the number of clients ever flagged."""
        store = self.guarded.store
        alerts = CounterMetricFamily(
            "modeltheft_extraction_alerts",
            "Extraction alerts raised (one per client and detector).",
            labels=["detector"],
        )
        for detector in DETECTORS:
            alerts.add_metric([detector], store.get(f"alerts:{detector}"))
        yield alerts
        flagged = GaugeMetricFamily(
            "modeltheft_flagged_clients", "Clients flagged by any extraction detector."
        )
        flagged.add_metric([], len(flagged_clients(store)))
        yield flagged


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, guarded: Guarded) -> Response:
    """Prometheus text exposition."""
    text = request.app.state.observability.exposition(StoreCollector(guarded))
    return Response(text, media_type=CONTENT_TYPE_LATEST)
