"""`/metrics` on the public host, for the platform's Prometheus."""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from apps.api.errors import json_error
from apps.monitoring.access import scrape_allowed
from apps.monitoring.exposition import metrics_render


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not scrape_allowed(request):
        return json_error(
            request, 403, "forbidden", "Metrics need the scrape token or an address in METRICS_ALLOWED_NETWORKS."
        )
    return HttpResponse(metrics_render(), content_type=CONTENT_TYPE_LATEST)
