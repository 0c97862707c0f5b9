"""URLs on the public host (`<PORTAL_DOMAIN>`): landing, sign-up and the platform staff's admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("apps.tenants.urls")),
]
