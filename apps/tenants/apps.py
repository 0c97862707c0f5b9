from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate, post_save


def _forget_hosts(sender, instance, **kwargs) -> None:
    """Any change to a tenant or domain (admin, services, shell) drops the cached host routing."""
    from apps.tenants.models import Tenant
    from apps.tenants.selectors import host_cache_forget, tenant_host_cache_clear

    if isinstance(instance, Tenant):
        tenant_host_cache_clear(instance)
    else:
        host_cache_forget([instance.domain])


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
        for model in (Tenant, Domain):
            post_save.connect(_forget_hosts, sender=model, dispatch_uid=f"forget-hosts-save-{model.__name__}")
            post_delete.connect(_forget_hosts, sender=model, dispatch_uid=f"forget-hosts-delete-{model.__name__}")
