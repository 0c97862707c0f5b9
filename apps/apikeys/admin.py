"""Keys in the admin: read-only for officers and owners; the hashes are never shown."""

from django.contrib import admin
from django.db import connection
from django.http import HttpRequest
from django_tenants.utils import get_public_schema_name

from apps.apikeys.models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
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

    def _in_tenant(self) -> bool:
        return connection.schema_name != get_public_schema_name()

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._in_tenant() and super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return self._in_tenant() and super().has_view_permission(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False
