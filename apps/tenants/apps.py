from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _public_site_ensure(sender, **kwargs) -> None:
    """Migrating the public schema also gives the public site its row, so a bare deployment serves it."""
    from django.db import connection
    from django_tenants.utils import get_public_schema_name

    from apps.tenants.services import public_tenant_ensure

    if connection.schema_name == get_public_schema_name():
        public_tenant_ensure()


class TenantsConfig(AppConfig):
    name = "apps.tenants"
    label = "tenants"
    verbose_name = "Tenants"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from apps.tenants.models import Domain, Tenant

        auditlog.register(Tenant)
        auditlog.register(Domain)
        post_migrate.connect(_public_site_ensure, sender=self)
