"""Platform-wide periodic work, fanned out into one task per tenant schema."""

from celery import shared_task
from django_tenants.utils import get_public_schema_name, schema_context

from apps.tenants.models import Tenant


@shared_task(runs_in_public_schema=True)
def clear_expired_sessions_everywhere() -> int:
    """Beat entry point: each tenant's sessions are cleared by a task running in that tenant's schema."""
    from apps.accounts.tasks import clear_expired_sessions

    schemas = list(Tenant.objects.exclude(schema_name=get_public_schema_name()).values_list("schema_name", flat=True))
    for schema in schemas:
        with schema_context(schema):
            clear_expired_sessions.delay()
    return len(schemas)
