"""``GET /metrics``: alert counters read from the shared state store, and request metrics.

Reading the alerts from the store (not from per-process counters) gives every worker and
replica the same totals. The request metrics (:mod:`modeltheft.service.observability`) add
up the workers of one ``serve`` command.

The counters move with each request (rows altered, refusals), so a client reading them
around its own queries would learn which answers were misinformed: ``/metrics`` asks for its
own credential, ``Authorization: Bearer <MODELTHEFT_METRICS_KEY>``. Without one configured
it answers 404; a client API key gets 403; anything else 401.
"""

from collections.abc import Iterator

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from modeltheft.defenses.alerts import flagged_clients
from modeltheft.defenses.detection import OodRateMonitor, Prada
from modeltheft.defenses.guarded import GuardedModel
from modeltheft.defenses.service_monitor import ServiceMonitor
from modeltheft.errors import AuthError
from modeltheft.service.auth import METRICS_HINT, MetricsKey
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


async def metrics_reader(request: Request) -> None:
    """Let through only the metrics credential: 404 if none is set, 403 for a client's key."""
    key: MetricsKey | None = request.app.state.metrics_key
    if key is None:
        raise HTTPException(404, f"metrics are disabled: {METRICS_HINT}")
    header = request.headers.get("authorization")
    if not header:
        raise AuthError("missing Authorization header (expected 'Bearer <metrics key>')")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("Authorization header must be 'Bearer <metrics key>'")
    if key.verify(token):
        return
    if request.app.state.keys.verify(token) is not None:
        raise HTTPException(403, "an API key cannot read /metrics: it needs the metrics credential")
    raise AuthError("unknown metrics key")


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_reader)])
def metrics(request: Request, guarded: Guarded) -> Response:
    """Prometheus text exposition."""
    text = request.app.state.observability.exposition(StoreCollector(guarded))
    return Response(text, media_type=CONTENT_TYPE_LATEST)
