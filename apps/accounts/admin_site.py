"""The admin site every host serves: in a tenant, staff roles enter it only with a verified second factor.

Installed as Django's default site (`admin_config.TwoFactorAdminConfig` replaces `django.contrib.admin` in the
app lists), so every `@admin.register` lands on it without each app knowing about the second factor.
"""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

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
