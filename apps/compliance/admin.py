"""Compliance officers read the access audit in their tenant's admin; nobody edits it."""

from django.contrib import admin
from django.db import connection
from django.http import HttpRequest
from django_tenants.utils import get_public_schema_name

from apps.compliance.models import AccessEvent


def _on_tenant_host() -> bool:
    # The table exists only in tenant schemas; on the public host the page would fail.
    return connection.schema_name != get_public_schema_name()


@admin.register(AccessEvent)
class AccessEventAdmin(admin.ModelAdmin):
    list_display = ("occurred_at", "reason", "key_prefix", "client_ip", "method", "path", "request_id")
    list_filter = ("reason", "occurred_at")
    date_hierarchy = "occurred_at"
    search_fields = ("key_prefix", "client_ip", "path", "request_id")
    show_full_result_count = False

    def has_module_permission(self, request: HttpRequest) -> bool:
        return _on_tenant_host() and super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: AccessEvent | None = None) -> bool:
        return _on_tenant_host() and super().has_view_permission(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AccessEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AccessEvent | None = None) -> bool:
        return False
