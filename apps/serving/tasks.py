from celery import shared_task

from apps.serving.health import servers_probe
from apps.tenants.tasks import send_to_tenants, tenant_schema_names

# A probe still queued when the next round is sent is worthless: drop it rather than run stale rounds back to back.
PROBE_EXPIRES_SECONDS = 25


@shared_task(expires=PROBE_EXPIRES_SECONDS)
def probe_servers() -> int:
    """Runs in one tenant's schema: probes its replicas and records their health. Returns how many were probed."""
    return len(servers_probe())


@shared_task(runs_in_public_schema=True, expires=PROBE_EXPIRES_SECONDS)
def probe_servers_everywhere() -> int:
    """Beat entry point: one probe task per tenant, each in that tenant's schema."""
    return send_to_tenants(probe_servers, tenant_schema_names())
