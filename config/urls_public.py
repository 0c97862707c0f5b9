"""URLs on the public host (`<PORTAL_DOMAIN>`): landing, sign-up and the platform staff's admin."""

from django.contrib import admin
from django.urls import include, path

handler404 = "apps.api.views.not_found"
handler500 = "apps.api.views.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("apps.tenants.urls")),
]
