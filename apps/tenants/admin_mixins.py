"""Admin building blocks shared by every app whose rows live in tenant schemas and change only through services."""

from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django_tenants.utils import get_public_schema_name


class TenantOnlyAdminMixin:
    """Shown on tenant hosts only: the table does not exist in the public schema."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return connection.schema_name != get_public_schema_name() and super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return connection.schema_name != get_public_schema_name() and super().has_view_permission(request, obj)


class ReadOnlyAdminMixin:
    """Rows change only through services, which audit the change with its actor; the admin only reads.

    The permissions say no to everyone, superusers included, and the list takes no POST at all: no bulk
    actions (not even the built-in `delete_selected`), no list editing, so a crafted form cannot reach a write.
    """

    actions = None

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if request.method == "POST":
            raise PermissionDenied
        return super().changelist_view(request, extra_context)
