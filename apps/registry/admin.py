"""The registry in the admin, read-only: who registered, promoted, rolled back or archived what, and why."""

from django.contrib import admin

from apps.registry.models import AliasChange, ModelAlias, ModelVersion, RegisteredModel
from apps.tenants.admin_mixins import ReadOnlyAdminMixin, TenantOnlyAdminMixin


class _ReadOnly(TenantOnlyAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    pass


@admin.register(RegisteredModel)
class RegisteredModelAdmin(_ReadOnly):
    list_display = ("name", "mlflow_name", "created_by", "created")
    search_fields = ("name",)


@admin.register(ModelVersion)
class ModelVersionAdmin(_ReadOnly):
    list_display = ("model", "version", "status", "run_id", "created_by", "created", "archived_at")
    list_filter = ("status", "model")
    list_select_related = ("model", "created_by")


@admin.register(ModelAlias)
class ModelAliasAdmin(_ReadOnly):
    list_display = ("model", "alias", "version", "updated")
    list_select_related = ("model", "version")


@admin.register(AliasChange)
class AliasChangeAdmin(_ReadOnly):
    list_display = ("changed_at", "model", "alias", "kind", "from_version", "to_version", "actor", "reason")
    list_filter = ("kind", "model", "changed_at")
    date_hierarchy = "changed_at"
    search_fields = ("reason", "alias", "model__name")
    list_select_related = ("model", "actor")
