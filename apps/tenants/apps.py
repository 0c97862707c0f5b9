from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "apps.tenants"
    label = "tenants"
    verbose_name = "Tenants"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from apps.tenants.models import Domain, Tenant

        auditlog.register(Tenant)
        auditlog.register(Domain)
