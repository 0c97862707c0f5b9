from django.contrib.auth import views as auth_views
from django.urls import include, path

from apps.compliance import report_pages, retention_pages
from apps.portal import inference_pages, keys, models_pages, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("members/", views.members, name="members"),
    path("members/<int:member_id>/role/", views.member_role, name="member_role"),
    path("members/<int:member_id>/active/", views.member_active, name="member_active"),
    path("keys/", keys.keys, name="keys"),
    path("keys/<int:key_id>/rotate/", keys.key_rotate, name="key_rotate"),
    path("keys/<int:key_id>/revoke/", keys.key_revoke, name="key_revoke"),
    path("models/", models_pages.models, name="models"),
    path("models/<str:name>/", models_pages.model_detail, name="model_detail"),
    path("models/<str:name>/versions/", models_pages.version_upload, name="version_upload"),
    path("models/<str:name>/promote/", models_pages.model_promote, name="model_promote"),
    path("models/<str:name>/rollback/", models_pages.model_rollback, name="model_rollback"),
    path("models/<str:name>/versions/<int:version>/archive/", models_pages.version_archive, name="version_archive"),
    path("servers/", models_pages.servers, name="servers"),
    path("servers/<int:server_id>/probe/", models_pages.server_probe, name="server_probe"),
    path("deployments/", models_pages.deployments, name="deployments"),
    path(
        "deployments/<int:deployment_id>/deactivate/",
        models_pages.deployment_deactivate,
        name="deployment_deactivate",
    ),
    path("playground/", inference_pages.playground, name="playground"),
    path("requests/", inference_pages.request_log, name="request_log"),
    path("requests/<str:request_id>/", inference_pages.request_detail, name="request_detail"),
    path("reports/", report_pages.reports, name="reports"),
    path("reports/<int:report_id>/", report_pages.report_detail, name="report_detail"),
    path("reports/<int:report_id>.csv", report_pages.report_download, {"fmt": "csv"}, name="report_csv"),
    path("reports/<int:report_id>.json", report_pages.report_download, {"fmt": "json"}, name="report_json"),
    path("reports/<int:report_id>.html", report_pages.report_download, {"fmt": "html"}, name="report_html"),
    path("retention/", retention_pages.retention, name="retention"),
    path("account/two-factor/", include("apps.accounts.urls")),
    path("invitation/<uidb64>/<token>/", views.InvitationAcceptView.as_view(), name="invitation_accept"),
]
