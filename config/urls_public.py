"""URLs on the public host (`<PORTAL_DOMAIN>`): landing, sign-up, the platform staff's admin and `/metrics`."""

from django.contrib import admin
from django.urls import include, path

from apps.monitoring.views import metrics

handler404 = "apps.api.views.not_found"
handler500 = "apps.api.views.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics, name="metrics"),
    path("", include("apps.tenants.urls")),
]
