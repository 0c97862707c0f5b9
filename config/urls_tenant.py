"""URLs on a tenant's host (`<slug>.<PORTAL_DOMAIN>`)."""

from django.contrib import admin
from django.urls import include, path

handler404 = "apps.api.views.not_found"
handler500 = "apps.api.views.server_error"

# The APIs first: Django tries patterns in order, and the inference endpoints are the hot path.
urlpatterns = [
    path("api/v1/", include("apps.api.urls")),
    path("v1/", include("apps.inference.openai_urls")),
    path("admin/", admin.site.urls),
    path("", include("apps.portal.urls")),
]
