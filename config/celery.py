"""The Celery app. Every task runs in the schema of the tenant that sent it.

tenant-schemas-celery stamps the sender's schema on each message and switches the worker's
connection to it before the task runs, so rows written by a task (audit log entries included)
land in that tenant's schema. On its own it falls back to the public schema when a message
carries none; `TenantTask` refuses that instead, unless a task says it works across tenants.
"""

import gc
import os

from celery.signals import worker_process_init, worker_ready
from tenant_schemas_celery.app import CeleryApp
from tenant_schemas_celery.task import TenantTask as _SchemaSwitchingTask

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class TenantContextMissing(RuntimeError):
    """A tenant task was sent or started without a tenant schema."""


def _current_schema_is_public() -> bool:
    from django.db import connection
    from django_tenants.utils import get_public_schema_name

    return connection.schema_name == get_public_schema_name()


class TenantTask(_SchemaSwitchingTask):
    """Base task: runs in its tenant's schema and never in public by accident.

    Tasks that legitimately work on the public schema (platform-wide fan-outs) set
    `runs_in_public_schema = True`.
    """

    abstract = True
    runs_in_public_schema = False

    def apply_async(self, args=None, kwargs=None, **options):
        if not self.runs_in_public_schema and _current_schema_is_public():
            raise TenantContextMissing(f"{self.name} must be sent from inside a tenant's schema.")
        return super().apply_async(args, kwargs, **options)

    def __call__(self, *args, **kwargs):
        if not self.runs_in_public_schema and _current_schema_is_public():
            raise TenantContextMissing(f"{self.name} received no tenant schema; refusing to run in public.")
        return super().__call__(*args, **kwargs)


app = CeleryApp("portal", task_cls=TenantTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
@worker_process_init.connect
def _freeze_start_up_objects(**kwargs) -> None:
    """As the web processes do (config/gunicorn.conf.py): start-up objects leave the collector's generations."""
    gc.collect()
    gc.freeze()
