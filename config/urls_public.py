"""URLs on the public host (`<PORTAL_DOMAIN>`): landing, sign-up, the platform staff's admin and `/metrics`."""

from django.urls import include, path
from django.views.generic import RedirectView

from apps.accounts.admin_site import public_admin_site
from apps.accounts.urls import second_factor_patterns
from apps.monitoring.views import metrics

handler404 = "apps.api.views.not_found"
handler500 = "apps.api.views.server_error"

urlpatterns = [
    path("admin/", public_admin_site().urls),
    path("account/two-factor/", include(second_factor_patterns)),
    path("metrics", metrics, name="metrics"),
    # The names LOGIN_URL and LOGIN_REDIRECT_URL point at: on this host, the admin is the only signed-in place.
    path("login/", RedirectView.as_view(pattern_name="admin:login", query_string=True), name="login"),
    path("dashboard/", RedirectView.as_view(pattern_name="admin:index"), name="dashboard"),
    path("", include("apps.tenants.urls")),
]
