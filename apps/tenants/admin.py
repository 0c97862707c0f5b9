"""Platform staff's view of tenants, on the public host's admin."""

from django.contrib import admin, messages
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest
from django_tenants.utils import get_public_schema_name

from apps.tenants.models import Domain, Tenant
from apps.tenants.services import tenant_set_status


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "schema_name", "plan", "status", "created")
    list_filter = ("status", "plan")
    search_fields = ("name", "schema_name", "domains__domain")
    # Retention is the tenant's own decision (its owners set it in the portal, audited there); staff only see it.
    readonly_fields = ("schema_name", "created", "record_retention_days", "payload_retention", "payload_retention_days")
    fields = (
        "name",
        "schema_name",
        "plan",
        "status",
        "created",
        "record_retention_days",
        "payload_retention",
        "payload_retention_days",
    )
    inlines = [DomainInline]
    actions = ["suspend", "reactivate"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return super().get_queryset(request).exclude(schema_name=get_public_schema_name())

    def has_module_permission(self, request: HttpRequest) -> bool:
        # The tenants table is visible through every tenant's search path; only the public host shows it.
        return connection.schema_name == get_public_schema_name() and super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return connection.schema_name == get_public_schema_name() and super().has_view_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return connection.schema_name == get_public_schema_name() and super().has_change_permission(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tenants come from sign-up, which creates the schema and the owner together

    def has_delete_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        return False  # deleting drops the schema; suspension is the reversible way

    @admin.action(description="Suspend selected tenants", permissions=["change"])
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            tenant_set_status(actor=request.user, tenant=tenant, status=Tenant.Status.SUSPENDED)
        self.message_user(request, f"Suspended {queryset.count()} tenant(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected tenants", permissions=["change"])
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            tenant_set_status(actor=request.user, tenant=tenant, status=Tenant.Status.ACTIVE)
        self.message_user(request, f"Reactivated {queryset.count()} tenant(s).", messages.SUCCESS)
