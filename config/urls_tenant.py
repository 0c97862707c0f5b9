"""URLs on a tenant's host (`<slug>.<PORTAL_DOMAIN>`)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("apps.portal.urls")),
]
