"""The Celery app. Every task runs in the schema of the tenant that sent it.

tenant-schemas-celery stamps the sender's schema on each message and switches the worker's
connection to it before the task runs, so rows written by a task (audit log entries included)
land in that tenant's schema. On its own it falls back to the public schema when a message
carries none; `TenantTask` refuses that instead, unless a task says it works across tenants.
"""

import gc
import os

from celery.signals import task_postrun, task_prerun, worker_process_init, worker_ready
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


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(sender=None, **kwargs) -> None:
    """Django's connection hygiene of a request, around each task: `CONN_MAX_AGE` and the health check decide.

    Celery's own closes every database connection before and after every task unless `CELERY_DB_REUSE_MAX` is set
    (settings), so each task that touched the database paid for a new PostgreSQL session (a backend process
    forked, authentication, `SET`s). Eager tasks run inside the caller's transaction and are left alone.
    """
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
