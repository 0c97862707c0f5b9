"""Keys in the admin: read-only for officers and owners; the hashes are never shown."""

from django.contrib import admin

from apps.apikeys.models import ApiKey
from apps.tenants.admin_mixins import ReadOnlyAdminMixin, TenantOnlyAdminMixin


@admin.register(ApiKey)
class ApiKeyAdmin(TenantOnlyAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "name",
        "prefix",
        "owner",
        "scopes",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "created",
    )
    list_filter = ("revoked_at", "expires_at", "created")
    search_fields = ("name", "prefix", "owner__email")
    fields = (
        "name", "prefix", "owner", "created_by", "scopes", "model_pins", "allowed_networks", "requests_per_minute",
        "expires_at", "created", "rotated_at", "last_used_at", "revoked_at", "revoked_by",
    )  # fmt: skip
    readonly_fields = fields
