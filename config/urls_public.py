"""URLs on the public host (`<PORTAL_DOMAIN>`): landing, sign-up, the platform staff's admin and `/metrics`."""

from django.urls import include, path

from apps.accounts.admin_site import public_admin_site
from apps.accounts.urls import second_factor_patterns
from apps.monitoring.views import metrics

handler404 = "apps.api.views.not_found"
handler500 = "apps.api.views.server_error"

urlpatterns = [
    path("admin/", public_admin_site().urls),
    path("account/two-factor/", include(second_factor_patterns)),
    path("metrics", metrics, name="metrics"),
    path("", include("apps.tenants.urls")),
]
