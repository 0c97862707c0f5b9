"""Compliance officers read the access audit and the inference record in their tenant's admin; nobody edits them."""

from django.contrib import admin

from apps.compliance.models import AccessEvent, InferenceRecord
from apps.tenants.admin_mixins import ReadOnlyAdminMixin, TenantOnlyAdminMixin


@admin.register(AccessEvent)
class AccessEventAdmin(TenantOnlyAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("occurred_at", "reason", "key_prefix", "client_ip", "method", "path", "request_id")
    list_filter = ("reason", "occurred_at")
    date_hierarchy = "occurred_at"
    search_fields = ("key_prefix", "client_ip", "path", "request_id")
    show_full_result_count = False


@admin.register(InferenceRecord)
class InferenceRecordAdmin(TenantOnlyAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "received_at",
        "request_id",
        "key_prefix",
        "model_name",
        "model_version",
        "status",
        "latency_ms",
        "cost",
    )
    list_filter = ("status", "model_name", "received_at")
    date_hierarchy = "received_at"
    search_fields = ("request_id", "key_prefix")
    show_full_result_count = False
