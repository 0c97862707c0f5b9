"""/api/v1/: every endpoint of the REST API, and its OpenAPI schema with offline Swagger UI and ReDoc."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from apps.api.views import MeView
from apps.apikeys.api import KeyDetailView, KeyRevokeView, KeyRotateView, KeysView

_public = {"authentication_classes": [], "permission_classes": [], "throttle_classes": []}

urlpatterns = [
    path("me", MeView.as_view(), name="api-me"),
    path("keys", KeysView.as_view(), name="api-keys"),
    path("keys/<int:key_id>", KeyDetailView.as_view(), name="api-key"),
    path("keys/<int:key_id>/rotate", KeyRotateView.as_view(), name="api-key-rotate"),
    path("keys/<int:key_id>/revoke", KeyRevokeView.as_view(), name="api-key-revoke"),
    path("schema/", SpectacularAPIView.as_view(**_public), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema", **_public), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema", **_public), name="api-redoc"),
]
