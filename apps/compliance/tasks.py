"""Draining the access-event buffer into each tenant's schema."""

from celery import shared_task
from django.db import connection
from django_tenants.utils import get_public_schema_name, schema_context

from apps.compliance.services import access_events_flush, access_events_pending
from apps.tenants.models import Tenant


@shared_task
def flush_access_events() -> int:
    """Runs in the sender's tenant schema, so the rows land where the requests were refused."""
    return access_events_flush(schema_name=connection.schema_name)


@shared_task(runs_in_public_schema=True)
def flush_access_events_everywhere() -> int:
    """Beat entry point: one flush task per tenant that has something buffered."""
    schemas = list(Tenant.objects.exclude(schema_name=get_public_schema_name()).values_list("schema_name", flat=True))
    pending = access_events_pending(schema_names=schemas)
    for schema in pending:
        with schema_context(schema):
            flush_access_events.delay()
    return len(pending)
