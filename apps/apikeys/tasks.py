from celery import shared_task
from django.db import connection
from django_tenants.utils import get_public_schema_name, schema_context

from apps.apikeys.services import apikey_touch_many
from apps.apikeys.usage import keys_last_used_drain
from apps.tenants.models import Tenant


@shared_task
def record_keys_last_used() -> int:
    return apikey_touch_many(last_used=keys_last_used_drain(schema=connection.schema_name))


@shared_task(runs_in_public_schema=True)
def record_keys_last_used_everywhere() -> int:
    schemas = list(Tenant.objects.exclude(schema_name=get_public_schema_name()).values_list("schema_name", flat=True))
    for schema in schemas:
        with schema_context(schema):
            record_keys_last_used.delay()
    return len(schemas)
