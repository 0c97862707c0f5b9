"""Platform-wide periodic work, fanned out into one task per tenant schema."""

from collections.abc import Iterable

from celery import Task, shared_task
from django_tenants.utils import get_public_schema_name, schema_context

from apps.tenants.models import Tenant


def tenant_schema_names() -> list[str]:
    return list(Tenant.objects.exclude(schema_name=get_public_schema_name()).values_list("schema_name", flat=True))


def send_to_tenants(task: Task, schemas: Iterable[str]) -> int:
    """Send `task` once into each schema: the way platform-wide periodic work reaches every tenant."""
    count = 0
    for schema in schemas:
        with schema_context(schema):
            task.delay()
        count += 1
    return count


@shared_task(runs_in_public_schema=True)
def clear_expired_sessions_everywhere() -> int:
    """Beat entry point: each tenant's sessions are cleared by a task running in that tenant's schema."""
    from apps.accounts.tasks import clear_expired_sessions

    return send_to_tenants(clear_expired_sessions, tenant_schema_names())
