"""Compliance officers read the access audit in their tenant's admin; nobody edits it."""

from django.contrib import admin

from apps.compliance.models import AccessEvent
from apps.tenants.admin_mixins import ReadOnlyAdminMixin, TenantOnlyAdminMixin


@admin.register(AccessEvent)
class AccessEventAdmin(TenantOnlyAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("occurred_at", "reason", "key_prefix", "client_ip", "method", "path", "request_id")
    list_filter = ("reason", "occurred_at")
    date_hierarchy = "occurred_at"
    search_fields = ("key_prefix", "client_ip", "path", "request_id")
    show_full_result_count = False
