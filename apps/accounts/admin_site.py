"""The admin site every host serves: staff enter it only with a verified second factor.

Installed as Django's default site (`admin_config.TwoFactorAdminConfig` replaces `django.contrib.admin` in the
app lists), so every `@admin.register` lands on it without each app knowing about the second factor. In a tenant
that is the staff roles (owners, compliance officers); on the public host it is platform staff.
"""

from django.conf import settings
from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django_tenants.routers import TenantSyncRouter

from apps.accounts.two_factor import second_factor_missing, second_factor_redirect


class TwoFactorAdminSite(admin.AdminSite):
    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and not second_factor_missing(request)

    def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        """A signed-in member who lacks only the second factor is sent to verify it, not shown a password form."""
        if super().has_permission(request) and second_factor_missing(request):
            target = request.GET.get("next") or reverse("admin:index", current_app=self.name)
            return second_factor_redirect(request, next_url=target)
        return super().login(request, extra_context)


def has_public_table(model: type[Model]) -> bool:
    """Whether the model's app is migrated into the public schema (tenants, platform staff and their records)."""
    return TenantSyncRouter().app_in_list(model._meta.app_label, settings.SHARED_APPS)


def public_admin_site() -> TwoFactorAdminSite:
    """The public host's admin: the default site's registrations, less every model that lives only in tenants.

    A tenant-only admin would merely refuse there (its table is not in the public schema); leaving its URLs out
    makes `/admin/compliance/...` on the public host a plain 404, like any address that does not exist, so no
    permission or mixin has to be right for a tenant's records to stay out of the platform's reach. The name is
    the default site's, so `admin:` URL names resolve on both hosts.
    """
    site = TwoFactorAdminSite(name=admin.site.name)
    for model, model_admin in admin.site._registry.items():
        if has_public_table(model):
            site.register(model, type(model_admin))
    return site
