from celery import shared_task
from django.db import connection

from apps.apikeys.services import apikey_touch_many
from apps.apikeys.usage import keys_last_used_drain
from apps.tenants.tasks import send_to_tenants, tenant_schema_names


@shared_task
def record_keys_last_used() -> int:
    """Runs in one tenant's schema: writes what the hot path collected in Redis."""
    return apikey_touch_many(last_used=keys_last_used_drain(schema=connection.schema_name))


@shared_task(runs_in_public_schema=True)
def record_keys_last_used_everywhere() -> int:
    return send_to_tenants(record_keys_last_used, tenant_schema_names())
