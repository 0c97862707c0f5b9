"""Servers and deployments in the tenant's admin: read-only (changes go through the services, which audit them);
the auth header's encrypted value is never shown, only whether one is set."""

from django.contrib import admin
from django.http import HttpRequest

from apps.serving.models import Deployment, ModelServer, ServerReplica
from apps.tenants.admin_mixins import ReadOnlyAdminMixin, TenantOnlyAdminMixin


class ServerReplicaInline(admin.TabularInline):
    model = ServerReplica
    extra = 0
    fields = ("base_url", "is_up", "status_changed_at", "last_checked_at", "last_error")
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        # Replicas are part of their server: whoever may see the server sees its addresses and health.
        return request.user.has_perm("serving.view_modelserver")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(ModelServer)
class ModelServerAdmin(TenantOnlyAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("name", "protocol", "gpu_pool", "accelerator", "max_concurrency", "created")
    list_filter = ("protocol", "gpu_pool")
    search_fields = ("name", "gpu_pool", "accelerator")
    fields = (
        "name", "protocol", "gpu_pool", "queue_name", "accelerator", "request_timeout_seconds", "max_concurrency",
        "auth_header_name", "has_auth_header", "auth_header_changed_at", "created_by", "created", "updated",
    )  # fmt: skip
    readonly_fields = fields
    inlines = [ServerReplicaInline]

    @admin.display(boolean=True, description="auth header set")
    def has_auth_header(self, server: ModelServer) -> bool:
        return server.has_auth_header

    @admin.display(description="queue")
    def queue_name(self, server: ModelServer) -> str:
        return server.queue_name


@admin.register(Deployment)
class DeploymentAdmin(TenantOnlyAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("model", "alias", "version", "server", "canary_version", "canary_percent", "is_active", "created")
    list_filter = ("is_active", "server")
    list_select_related = ("model", "version", "server", "canary_version", "version__model", "canary_version__model")
    search_fields = ("model__name", "alias", "server__name")
    fields = (
        "model", "alias", "version", "server", "canary_version", "canary_percent", "price_per_request",
        "price_per_1k_tokens", "price_per_gpu_second", "is_active", "created_by", "created", "updated",
    )  # fmt: skip
    readonly_fields = fields
