"""Members in the admin are read-only: every change goes through the portal's services, which audit it."""

from django.contrib import admin
from django.http import HttpRequest

from apps.accounts.models import User
from apps.accounts.selectors import user_role
from apps.tenants.admin_mixins import ReadOnlyAdminMixin


@admin.register(User)
class UserAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("email", "full_name", "role", "is_active", "date_joined", "last_login")
    list_filter = ("is_active", "groups")
    search_fields = ("email", "full_name")
    exclude = ("password",)
    readonly_fields = [
        "email",
        "full_name",
        "is_active",
        "is_staff",
        "is_superuser",
        "groups",
        "user_permissions",
        "date_joined",
        "last_login",
        "invited_by",
        "invitation_sent_at",
    ]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="Role")
    def role(self, obj: User) -> str:
        role = user_role(obj)
        return role.label if role else "—"
