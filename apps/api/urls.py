"""/api/v1/: every endpoint of the REST API, and its OpenAPI schema with offline Swagger UI and ReDoc."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from apps.api.views import MeView
from apps.apikeys.api import KeyDetailView, KeyRevokeView, KeyRotateView, KeysView
from apps.compliance import api as compliance
from apps.inference.api import JobView, PredictView
from apps.registry import api as registry
from apps.serving import api as serving

_public = {"authentication_classes": [], "permission_classes": [], "throttle_classes": []}

urlpatterns = [
    # The hot path first: Django tries patterns in order, and every miss costs a little on every request.
    path("models/<str:name>/predict", PredictView.as_view(), name="api-model-predict"),
    path("jobs/<str:job_id>", JobView.as_view(), name="api-job"),
    path("me", MeView.as_view(), name="api-me"),
    path("keys", KeysView.as_view(), name="api-keys"),
    path("keys/<int:key_id>", KeyDetailView.as_view(), name="api-key"),
    path("keys/<int:key_id>/rotate", KeyRotateView.as_view(), name="api-key-rotate"),
    path("keys/<int:key_id>/revoke", KeyRevokeView.as_view(), name="api-key-revoke"),
    path("models", registry.ModelsView.as_view(), name="api-models"),
    path("models/<str:name>", registry.ModelDetailView.as_view(), name="api-model"),
    path("models/<str:name>/versions", registry.VersionsView.as_view(), name="api-model-versions"),
    path("models/<str:name>/versions/<int:version>", registry.VersionDetailView.as_view(), name="api-model-version"),
    path(
        "models/<str:name>/versions/<int:version>/schema",
        registry.VersionSchemaView.as_view(),
        name="api-model-version-schema",
    ),
    path(
        "models/<str:name>/versions/<int:version>/archive",
        registry.VersionArchiveView.as_view(),
        name="api-model-version-archive",
    ),
    path("models/<str:name>/aliases/<str:alias>", registry.AliasView.as_view(), name="api-model-alias"),
    path("models/<str:name>/promote", registry.PromoteView.as_view(), name="api-model-promote"),
    path("models/<str:name>/rollback", registry.RollbackView.as_view(), name="api-model-rollback"),
    path("models/<str:name>/history", registry.HistoryView.as_view(), name="api-model-history"),
    path("servers", serving.ServersView.as_view(), name="api-servers"),
    path("servers/<int:server_id>", serving.ServerDetailView.as_view(), name="api-server"),
    path("servers/<int:server_id>/probe", serving.ServerProbeView.as_view(), name="api-server-probe"),
    path("deployments", serving.DeploymentsView.as_view(), name="api-deployments"),
    path("deployments/<int:deployment_id>", serving.DeploymentDetailView.as_view(), name="api-deployment"),
    path(
        "deployments/<int:deployment_id>/deactivate",
        serving.DeploymentDeactivateView.as_view(),
        name="api-deployment-deactivate",
    ),
    path("reports", compliance.ReportsView.as_view(), name="api-reports"),
    path("reports/<int:report_id>", compliance.ReportDetailView.as_view(), name="api-report"),
    path("reports/<int:report_id>/download", compliance.ReportDownloadView.as_view(), name="api-report-download"),
    path("schema/", SpectacularAPIView.as_view(**_public), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema", **_public), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema", **_public), name="api-redoc"),
]
